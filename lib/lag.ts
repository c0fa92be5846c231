/**
 * The per-region lag watermark. Ingest writes a pending-index entry per status
 * message (keyed by enqueue time) and bumps `enqueued`; the consumer deletes the
 * entry and bumps `applied` in the same commit that applies the message. So the
 * oldest pending entry dates the oldest unapplied update, and the counters give
 * how many are pending. Messages the queue gave up on are moved to `dead`.
 */
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

/** Reads a region's lag; retires pending entries whose message was dead-lettered. */
export async function readLag(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<Lag> {
  const oldest: Deno.KvEntry<PendingMessage>[] = [];
  const counters = kv.getMany([
    keys.counter(region, "enqueued"),
    keys.counter(region, "applied"),
    keys.counter(region, "dead"),
  ], { consistency });
  for await (
    const entry of kv.list<PendingMessage>({ prefix: keys.pendingIndex(region) }, {
      limit: DEAD_SCAN,
      consistency,
    })
  ) oldest.push(entry);
  let live = oldest;
  if (oldest.length > 0) {
    const dead = await kv.getMany(
      oldest.map((e) => keys.deadLetter(region, e.key.at(-1) as string)),
      { consistency },
    );
    const retired = oldest.filter((_e, i) => dead[i].versionstamp !== null);
    if (retired.length > 0) {
      await retireDeadPending(kv, region, retired);
      live = oldest.filter((_e, i) => dead[i].versionstamp === null);
      if (live.length === 0) return readLag(kv, clock, region, consistency);
    }
  }
  const [enqueued, applied, deadLettered] = (await counters).map(counterValue);
  const oldestAt = live.length > 0 ? live[0].key.at(-2) as number : null;
  return {
    lagMs: oldestAt === null ? 0 : Math.max(0, clock.now() - oldestAt),
    pending: Math.max(0, enqueued - applied - deadLettered),
    enqueued,
    applied,
    deadLettered,
  };
}

async function retireDeadPending(
  kv: Deno.Kv,
  region: string,
  entries: Deno.KvEntry<PendingMessage>[],
): Promise<void> {
  const op = kv.atomic();
  let count = 0;
  for (const entry of entries) {
    op.check(entry).delete(entry.key);
    count += entry.value.count;
  }
  addCounter(op, region, "dead", count);
  await op.commit(); // a conflict means someone else retired them
}
