/**
 * The per-region lag watermark. Ingest writes a pending-index entry per status
 * message (keyed by enqueue time) and bumps `enqueued`; the consumer deletes the
 * entry and bumps `applied` in the same commit that applies the message. So the
 * oldest pending entry dates the oldest unapplied update, and the counters give
 * how many are pending. Messages the queue gave up on are moved to `dead`.
 */
import type { AtomicWriter } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { keys } from "./keys.ts";
import { addCounter, counterValue } from "./kv.ts";

/** Pending-index value: how many updates the message carries. */
export interface PendingMessage {
  count: number;
}

/** A region's status-pipeline watermark. */
export interface Lag {
  /** Age of the oldest enqueued, unapplied update (0 when none). */
  lagMs: number;
  /** Updates enqueued and neither applied nor dead-lettered. */
  pending: number;
  enqueued: number;
  applied: number;
  /** Updates in messages that exhausted their retries. */
  deadLettered: number;
}

/** How many oldest pending entries one read inspects for dead letters. */
const DEAD_SCAN = 5;
/** Rounds of DEAD_SCAN entries one read retires at most: bounds a read's cost. */
const MAX_RETIRE_ROUNDS = 100;

/** The counter keys a lag is computed from: enqueued, applied, dead. */
export function lagCounterKeys(region: string): Deno.KvKey[] {
  return [
    keys.counter(region, "enqueued"),
    keys.counter(region, "applied"),
    keys.counter(region, "dead"),
  ];
}

/** Reads a region's lag; retires pending entries whose message was dead-lettered. */
export async function readLag(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<Lag> {
  const [counters, { oldest, retired }] = await Promise.all([
    kv.getMany(lagCounterKeys(region), { consistency }),
    oldestPending(kv, region, consistency),
  ]);
  const fresh = retired ? await kv.getMany(lagCounterKeys(region), { consistency }) : counters;
  return lagFrom(clock, fresh, oldest);
}

/** A lag from its counters (as read with lagCounterKeys) and the oldest live pending entry. */
export function lagFrom(
  clock: Clock,
  counters: Deno.KvEntryMaybe<unknown>[],
  oldest: Deno.KvEntry<PendingMessage> | null,
): Lag {
  const [enqueued, applied, deadLettered] = counters.map(counterValue);
  const oldestAt = oldest === null ? null : oldest.key.at(-2) as number;
  return {
    lagMs: oldestAt === null ? 0 : Math.max(0, clock.now() - oldestAt),
    pending: Math.max(0, enqueued - applied - deadLettered),
    enqueued,
    applied,
    deadLettered,
  };
}

/**
 * The oldest pending entry whose message was not dead-lettered, retiring those that
 * were; `retired` says whether it did (counters read before it are then out of date).
 * Past its budget of rounds (a pile of dead letters), it answers the oldest entry it has
 * not checked, as if live: the lag reads too high until later reads retire the rest, and
 * no claim or region read fails for it.
 */
export async function oldestPending(
  kv: Deno.Kv,
  region: string,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<{ oldest: Deno.KvEntry<PendingMessage> | null; retired: boolean }> {
  let retiredAny = false;
  for (let round = 0;; round++) {
    const oldest: Deno.KvEntry<PendingMessage>[] = [];
    const listing = kv.list<PendingMessage>({ prefix: keys.pendingIndex(region) }, {
      limit: DEAD_SCAN,
      consistency,
    });
    for await (const entry of listing) oldest.push(entry);
    if (oldest.length === 0) return { oldest: null, retired: retiredAny };
    if (round === MAX_RETIRE_ROUNDS) return { oldest: oldest[0], retired: retiredAny };
    const dead = await kv.getMany(
      oldest.map((e) => keys.deadLetter(region, e.key.at(-1) as string)),
      { consistency },
    );
    const live = oldest.find((_e, i) => dead[i].versionstamp === null);
    const retired = oldest.filter((_e, i) => dead[i].versionstamp !== null);
    if (retired.length > 0) {
      await retireDeadPending(kv, region, retired);
      retiredAny = true;
    }
    if (live) return { oldest: live, retired: retiredAny };
  }
}

async function retireDeadPending(
  kv: Deno.Kv,
  region: string,
  entries: Deno.KvEntry<PendingMessage>[],
): Promise<void> {
  const op = kv.atomic();
  stageRetirement(op, region, entries);
  await op.commit(); // a conflict means someone else retired them
}

/**
 * Retires the pending entries of dead-lettered messages, checked: they leave the lag's
 * watermark, and their updates count as dead instead of pending.
 */
export function stageRetirement(
  op: AtomicWriter,
  region: string,
  entries: readonly Deno.KvEntry<PendingMessage>[],
): void {
  let count = 0;
  for (const entry of entries) {
    op.check(entry);
    op.delete(entry.key);
    count += entry.value.count;
  }
  addCounter(op, region, "dead", count);
}
