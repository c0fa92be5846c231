/**
 * Status ingestion and the plan that applies it. A request's updates are made durable
 * with kv.enqueue in the same atomic that records them in the region's lag watermark,
 * so a 202 survives a crash and the watermark can never miss a message.
 */
import { ulid } from "ulid";
import type { AtomicPlan } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { UnavailableError } from "./errors.ts";
import { keys } from "./keys.ts";
import { addCounter, counterValue, getAll, markWrite } from "./kv.ts";
import type { PendingMessage } from "./lag.ts";
import { readHeldSlots, type ResourceSpec, stageSpecChange } from "./pool.ts";
import type { StatusBatchMessage } from "./queue.ts";
import { getRegionConfig } from "./regions.ts";
import type { Telemetry } from "./resources.ts";
import type { StatusUpdate } from "./schemas.ts";

/** Updates per queue message: small enough that a message's apply fits one atomic. */
export const UPDATES_PER_MESSAGE = 25;
/** Bytes of updates per queue message (Deno KV caps a message at 64 KiB). */
const MESSAGE_BYTES = 48 * 1024;
/** Ingest refuses new batches while this many updates of a region wait (bounded backlog). */
export const MAX_PENDING_UPDATES = 100_000;
/** Redelivery delays for a status message before it is dead-lettered. */
export const STATUS_BACKOFF_MS = [100, 1000, 5000];

/** Splits updates into messages bounded by count and bytes. */
export function chunkUpdates(updates: readonly StatusUpdate[]): StatusUpdate[][] {
  const chunks: StatusUpdate[][] = [];
  let current: StatusUpdate[] = [];
  let bytes = 0;
  for (const update of updates) {
    const size = JSON.stringify(update).length;
    if (
      current.length >= UPDATES_PER_MESSAGE || (current.length > 0 && bytes + size > MESSAGE_BYTES)
    ) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(update);
    bytes += size;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

/**
 * Makes a validated batch durable: one atomic enqueues its messages, writes their
 * pending-index entries and bumps the region's `enqueued` counter. 503 + Retry-After
 * when the region's backlog is over its bound.
 */
export async function ingestStatus(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  updates: readonly StatusUpdate[],
): Promise<{ accepted: number; messages: number; consistencyToken: string }> {
  await getRegionConfig(kv, region);
  const [enqueued, applied, dead] = (await kv.getMany([
    keys.counter(region, "enqueued"),
    keys.counter(region, "applied"),
    keys.counter(region, "dead"),
  ])).map(counterValue);
  if (enqueued - applied - dead + updates.length > MAX_PENDING_UPDATES) {
    throw new UnavailableError(
      `Cannot accept status for region "${region}": ${
        enqueued - applied - dead
      } updates are still waiting to be applied`,
      2,
    );
  }
  const enqueuedAt = clock.now();
  const chunks = chunkUpdates(updates);
  const op = kv.atomic();
  for (const chunk of chunks) {
    const message: StatusBatchMessage = {
      type: "status.batch",
      id: ulid(),
      region,
      enqueuedAt,
      updates: chunk,
    };
    op.enqueue(message, {
      keysIfUndelivered: [keys.deadLetter(region, message.id)],
      backoffSchedule: STATUS_BACKOFF_MS,
    });
    op.set(
      keys.pending(region, enqueuedAt, message.id),
      { count: chunk.length } satisfies PendingMessage,
    );
  }
  addCounter(op, region, "enqueued", updates.length);
  markWrite(op, region);
  const res = await op.commit();
  if (!res.ok) throw new UnavailableError(`Cannot accept status for region "${region}": retry`);
  return { accepted: updates.length, messages: chunks.length, consistencyToken: res.versionstamp };
}

/** The spec a resource ends with after `updates` (in seq order) are applied to `spec`. */
export function foldUpdates(
  id: string,
  spec: ResourceSpec | null,
  updates: readonly StatusUpdate[],
  now: number,
): ResourceSpec {
  let next: ResourceSpec = spec ?? { id, slots: 1, labels: {}, state: "ready", updatedAt: now };
  for (const u of updates) {
    next = {
      ...next,
      state: u.state,
      slots: u.slots ?? next.slots,
      labels: u.labels ?? next.labels,
    };
  }
  return { ...next, updatedAt: now };
}

function specChanged(before: ResourceSpec | null, after: ResourceSpec): boolean {
  if (before === null) return after.state !== "gone";
  return before.state !== after.state || before.slots !== after.slots ||
    JSON.stringify(before.labels) !== JSON.stringify(after.labels);
}

/** What planning a group of messages produced. */
export interface PlannedApply {
  /** Updates newer than what was applied (the rest were no-ops). */
  applied: number;
  /** Messages whose bookkeeping is in this plan. */
  completed: number;
  regions: Set<string>;
  /** Resources that this plan turns `gone`: their leases are then marked lost. */
  gone: Array<{ region: string; id: string }>;
}

/**
 * Plans the apply of `messages` into `plan`: per resource, every update newer than
 * the applied seq, coalesced, with checks on what was read (telemetry, spec, slots),
 * and each message's watermark bookkeeping (checked, so a redelivered message that
 * was already applied counts nothing twice). `bookkeep: false` plans updates only.
 */
export async function planApply(
  kv: Deno.Kv,
  clock: Clock,
  plan: AtomicPlan,
  messages: readonly StatusBatchMessage[],
  bookkeep = true,
): Promise<PlannedApply> {
  const now = clock.now();
  const result: PlannedApply = { applied: 0, completed: 0, regions: new Set(), gone: [] };
  const unique = [...new Map(messages.map((m) => [m.id, m])).values()];
  const pending = await getAll<PendingMessage>(
    kv,
    unique.map((m) => keys.pending(m.region, m.enqueuedAt, m.id)),
  );
  // No pending entry: the message was applied already (a redelivery), so it is skipped whole.
  const live = unique.flatMap((message, i) =>
    pending[i].versionstamp === null ? [] : [{ message, pending: pending[i] }]
  );
  const byResource = new Map<string, { region: string; id: string; updates: StatusUpdate[] }>();
  for (const { message } of live) {
    for (const update of message.updates) {
      const k = `${message.region}\u0000${update.resource}`;
      const group = byResource.get(k) ??
        { region: message.region, id: update.resource, updates: [] };
      group.updates.push(update);
      byResource.set(k, group);
    }
  }
  const groups = [...byResource.values()];
  const entries = await getAll<ResourceSpec | Telemetry>(
    kv,
    groups.flatMap((g) => [keys.resource(g.region, g.id), keys.telemetry(g.region, g.id)]),
  );
  await Promise.all(groups.map(async (group, i) => {
    const spec = entries[2 * i] as Deno.KvEntryMaybe<ResourceSpec>;
    const telemetry = entries[2 * i + 1] as Deno.KvEntryMaybe<Telemetry>;
    const appliedSeq = telemetry.value?.seq ?? 0;
    const fresh = group.updates.filter((u) => u.seq > appliedSeq).sort((a, b) => a.seq - b.seq);
    if (fresh.length === 0) return;
    const last = fresh[fresh.length - 1];
    const loads = fresh.filter((u) => u.load !== undefined);
    plan.check(telemetry);
    plan.set(
      keys.telemetry(group.region, group.id),
      {
        seq: last.seq,
        load: loads.length > 0 ? loads[loads.length - 1].load! : telemetry.value?.load ?? null,
        at: now,
      } satisfies Telemetry,
    );
    const next = foldUpdates(group.id, spec.value, fresh, now);
    if (specChanged(spec.value, next)) {
      const held = await readHeldSlots(kv, group.region, group.id);
      stageSpecChange(plan, group.region, spec, next, held);
      if (next.state === "gone") result.gone.push({ region: group.region, id: group.id });
    }
    result.applied += new Set(fresh.map((u) => u.seq)).size;
    result.regions.add(group.region);
  }));
  if (bookkeep) {
    for (const { message, pending } of live) {
      plan.check(pending);
      plan.delete(pending.key);
      addCounter(plan, message.region, "applied", pending.value!.count);
      result.regions.add(message.region);
      result.completed++;
    }
  }
  for (const region of result.regions) markWrite(plan, region);
  return result;
}
