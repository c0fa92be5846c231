/**
 * A white-box audit of a stopped server's KV file: after any number of kill -9s, every
 * index and counter must agree with the records it summarises, because each write that
 * touches them is one atomic. It reads the file directly (the server must be stopped:
 * one process owns one KV file) and trusts only the key layout of lib/keys.ts.
 */
import { keys } from "../lib/keys.ts";
import { counterValue, listAll } from "../lib/kv.ts";
import type { PendingMessage } from "../lib/lag.ts";
import type { ClaimRecord } from "../lib/leases.ts";
import { type FreeSlot, type HeldSlot, isClaimable, type ResourceSpec } from "../lib/pool.ts";
import type { ChaosViolation } from "./audit.ts";

/** An entry keyed by (resource, slot): a held slot or a free-index entry. */
interface SlotEntry<T> {
  resource: string;
  slot: number;
  value: T;
}

/** What one region's state holds, read in one pass. */
interface RegionState {
  specs: Map<string, ResourceSpec>;
  /** By slotName. */
  held: Map<string, SlotEntry<HeldSlot>>;
  free: Map<string, SlotEntry<FreeSlot>>;
  claims: Map<string, ClaimRecord>;
  leases: Deno.KvEntry<null>[];
  pending: Deno.KvEntry<PendingMessage>[];
  dead: number;
  counters: Record<"slots" | "free" | "held" | "enqueued" | "applied" | "dead", number>;
}

const slotName = (resource: string, slot: number) => `${resource}#${slot}`;

/** Entries whose keys end in (resource, slot), by slotName. */
function bySlot<T>(entries: Deno.KvEntry<T>[]): Map<string, SlotEntry<T>> {
  return new Map(entries.map((e) => {
    const [resource, slot] = e.key.slice(-2) as [string, number];
    return [slotName(resource, slot), { resource, slot, value: e.value }];
  }));
}

async function readRegion(kv: Deno.Kv, region: string): Promise<RegionState> {
  const specs = await listAll<ResourceSpec>(kv, keys.resources(region));
  const held = await listAll<HeldSlot>(kv, keys.allSlots(region));
  const free = await listAll<FreeSlot>(kv, keys.freeIndex(region));
  const claims = await listAll<ClaimRecord>(kv, keys.claims(region));
  const names = ["slots", "free", "held", "enqueued", "applied", "dead"] as const;
  const counters = await kv.getMany(names.map((name) => keys.counter(region, name)));
  return {
    specs: new Map(specs.map((e) => [e.value.id, e.value])),
    held: bySlot(held),
    free: bySlot(free),
    claims: new Map(claims.map((e) => [e.value.id, e.value])),
    leases: await listAll<null>(kv, keys.leases(region)),
    pending: await listAll<PendingMessage>(kv, keys.pendingIndex(region)),
    dead: (await listAll(kv, keys.deadLetters(region))).length,
    counters: Object.fromEntries(
      names.map((name, i) => [name, counterValue(counters[i])]),
    ) as RegionState["counters"],
  };
}

/** The pool invariant of lib/pool.ts: a free entry exactly for each claimable, unheld slot. */
function checkPool(s: RegionState, problems: string[]): void {
  let slots = 0;
  for (const spec of s.specs.values()) {
    if (spec.state !== "gone") slots += spec.slots;
    for (let slot = 0; slot < spec.slots; slot++) {
      const name = slotName(spec.id, slot);
      const shouldBeFree = isClaimable(spec, slot) && !s.held.has(name);
      if (shouldBeFree !== s.free.has(name)) {
        problems.push(
          `slot ${name} (${spec.state}, held: ${s.held.has(name)}) has ${
            s.free.has(name) ? "a" : "no"
          } free entry`,
        );
      }
    }
  }
  for (const [name, free] of s.free) {
    const spec = s.specs.get(free.resource);
    if (!spec || free.slot >= spec.slots) problems.push(`free entry ${name} names no slot`);
    else if (JSON.stringify(free.value.labels) !== JSON.stringify(spec.labels)) {
      problems.push(`free entry ${name} carries labels ${JSON.stringify(free.value.labels)}`);
    }
  }
  const expect = { slots, free: s.free.size, held: s.held.size };
  for (const [name, count] of Object.entries(expect)) {
    const counter = s.counters[name as keyof typeof expect];
    if (counter !== count) problems.push(`counter ${name} is ${counter}, the entries say ${count}`);
  }
}

/** Held slots, active claims and the lease expiry index point at each other. */
function checkLeases(s: RegionState, problems: string[]): void {
  for (const [name, { value: { claimId } }] of s.held) {
    const claim = s.claims.get(claimId);
    if (!claim || claim.state !== "active" || slotName(claim.resource, claim.slot) !== name) {
      problems.push(`slot ${name} is held by ${claimId}, which is ${claim?.state ?? "absent"}`);
    }
  }
  const indexed = new Map(s.leases.map((e) => [e.key.at(-1) as string, e.key.at(-2) as number]));
  for (const claim of s.claims.values()) {
    if (claim.state !== "active") continue;
    if (s.held.get(slotName(claim.resource, claim.slot))?.value.claimId !== claim.id) {
      problems.push(`active claim ${claim.id} does not hold its slot`);
    }
    if (indexed.get(claim.id) !== claim.expiresAt) {
      problems.push(`active claim ${claim.id} is missing from the expiry index`);
    }
  }
  for (const [id] of indexed) {
    if (s.claims.get(id)?.state !== "active") problems.push(`expiry index names ended claim ${id}`);
  }
}

/** The status watermark: pending entries account for exactly the unapplied updates. */
function checkWatermark(s: RegionState, problems: string[]): void {
  const pending = s.pending.reduce((sum, e) => sum + e.value.count, 0);
  const { enqueued, applied, dead } = s.counters;
  if (enqueued - applied - dead !== pending) {
    problems.push(
      `watermark: enqueued ${enqueued} - applied ${applied} - dead ${dead} != ${pending} pending`,
    );
  }
  if (s.dead > 0) problems.push(`${s.dead} status messages were dead-lettered`);
}

/** Audits the regions of a KV file; the server that owns it must be stopped. */
export async function auditKvFile(
  path: string,
  regions: readonly string[],
): Promise<ChaosViolation[]> {
  using kv = await Deno.openKv(path);
  const violations: ChaosViolation[] = [];
  for (const region of regions) {
    const state = await readRegion(kv, region);
    const problems: string[] = [];
    checkPool(state, problems);
    checkLeases(state, problems);
    checkWatermark(state, problems);
    for (const message of problems) {
      violations.push({ kind: "kv-state", message: `region ${region}: ${message}` });
    }
  }
  return violations;
}
