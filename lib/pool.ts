/**
 * The pool invariant, in one place. For every resource r and slot i:
 *
 *   free(r, i) exists  <=>  spec(r) is ready, i < spec(r).slots, and slot(r, i) is not held
 *
 * A claim consumes a free entry (checking it) and writes the held slot. Ending a
 * lease deletes the held slot and recreates the free entry only if the spec (which
 * it checks) allows it. A spec change rewrites free entries, checking every slot
 * entry whose free entry it removes or rewrites. So each of these writes checks exactly
 * what the invariant depends on, and a race costs a retry, never a double allocation.
 */
import type { AtomicWriter } from "./atomic.ts";
import { keys } from "./keys.ts";
import { addCounter, getAll } from "./kv.ts";
import type { Labels, ResourceState } from "./schemas.ts";

/** What decides claimability; changes rarely, so claims may depend on it. */
export interface ResourceSpec {
  id: string;
  slots: number;
  labels: Labels;
  state: ResourceState;
  updatedAt: number;
}

/** Value of a held slot. */
export interface HeldSlot {
  claimId: string;
}

/** Value of a free-index entry: the labels a claim filters on, copied from the spec. */
export interface FreeSlot {
  labels: Labels;
}

/** Whether slot `slot` of a resource with this spec may be handed out when not held. */
export function isClaimable(spec: ResourceSpec | null, slot: number): boolean {
  return spec !== null && spec.state === "ready" && slot < spec.slots;
}

/** Slots counted in a region's total: those of every resource not gone. */
function countedSlots(spec: ResourceSpec | null): number {
  return spec === null || spec.state === "gone" ? 0 : spec.slots;
}

function sameLabels(a: Labels, b: Labels): boolean {
  const ak = Object.keys(a);
  return ak.length === Object.keys(b).length && ak.every((k) => b[k] === a[k]);
}

/** Whether `labels` carries every wanted label. */
export function labelsMatch(labels: Labels, wanted: Labels | undefined): boolean {
  if (!wanted) return true;
  return Object.entries(wanted).every(([k, v]) => labels[k] === v);
}

/**
 * Adds a spec change of one resource to `op`: the spec write, every free-index
 * write it implies, the checks those depend on, and the pool counters. `held` is
 * the resource's slot entries as read. Returns how many checks it added. The caller
 * bumps the region's resources version in the same commit (once, however many specs);
 * `specCovered` when it also checks that version, read before `before`, which then
 * covers the spec (held slots are still checked: claims write them, not the version).
 */
export function stageSpecChange(
  op: AtomicWriter,
  region: string,
  before: Deno.KvEntryMaybe<ResourceSpec>,
  after: ResourceSpec | null,
  held: ReadonlyMap<number, Deno.KvEntry<HeldSlot>>,
  specCovered = false,
): number {
  const id = after?.id ?? before.value?.id;
  if (id === undefined) throw new Error("stageSpecChange needs a before or an after spec");
  let checks = 0;
  if (!specCovered) {
    op.check(before);
    checks++;
  }
  let freeDelta = 0;
  const width = Math.max(before.value?.slots ?? 0, after?.slots ?? 0);
  const relabelled = before.value !== null && after !== null &&
    !sameLabels(before.value.labels, after.labels);
  for (let slot = 0; slot < width; slot++) {
    const was = isClaimable(before.value, slot);
    const now = isClaimable(after, slot);
    if (!was && !now) continue;
    if (was && now && !relabelled) continue;
    const heldEntry = held.get(slot);
    // Every slot whose state this change relies on is checked as read, except a free
    // slot that only now becomes claimable: with no free entry no claim can take it,
    // and no lease holds it, so nothing else can write it meanwhile.
    if (was || heldEntry) {
      op.check(heldEntry ?? { key: keys.slot(region, id, slot), versionstamp: null });
      checks++;
    }
    if (heldEntry) continue;
    if (now) {
      op.set(keys.free(region, id, slot), { labels: after!.labels } satisfies FreeSlot);
      if (!was) freeDelta++;
    } else {
      op.delete(keys.free(region, id, slot));
      freeDelta--;
    }
  }
  if (after) op.set(keys.resource(region, id), after);
  else op.delete(keys.resource(region, id));
  addCounter(op, region, "free", freeDelta);
  addCounter(op, region, "slots", countedSlots(after) - countedSlots(before.value));
  return checks;
}

/** A resource's held slots, by slot number. */
export async function readHeldSlots(
  kv: Deno.Kv,
  region: string,
  id: string,
): Promise<Map<number, Deno.KvEntry<HeldSlot>>> {
  const held = new Map<number, Deno.KvEntry<HeldSlot>>();
  for await (const entry of kv.list<HeldSlot>({ prefix: keys.slots(region, id) })) {
    held.set(entry.key.at(-1) as number, entry);
  }
  return held;
}

/**
 * The held slots among the first `slots` of each resource, read in one batch of point
 * reads: what stageSpecChange needs for a spec change of that width (it touches no
 * slot past it), and far cheaper than a list per resource when many change at once.
 */
export async function readHeldSlotsOf(
  kv: Deno.Kv,
  resources: ReadonlyArray<{ region: string; id: string; slots: number }>,
): Promise<Map<number, Deno.KvEntry<HeldSlot>>[]> {
  const slotKeys = resources.flatMap(({ region, id, slots }) =>
    Array.from({ length: slots }, (_, slot) => keys.slot(region, id, slot))
  );
  const entries = await getAll<HeldSlot>(kv, slotKeys);
  let at = 0;
  return resources.map(({ slots }) => {
    const held = new Map<number, Deno.KvEntry<HeldSlot>>();
    for (let slot = 0; slot < slots; slot++, at++) {
      const entry = entries[at];
      if (entry.versionstamp !== null) held.set(slot, entry as Deno.KvEntry<HeldSlot>);
    }
    return held;
  });
}
