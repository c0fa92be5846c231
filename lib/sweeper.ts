/**
 * Lease expiry, durably, at one queue message per region per tick instead of one per
 * claim. Each region that holds leases has one sweep chain: a delayed `lease.sweep`
 * message that expires what is due, then enqueues its successor for the next expiry
 * (at most SWEEP_EVERY_MS away), and ends when the region holds no lease.
 *
 * A claim or renew relies on the chain it read and checks that read in its own commit;
 * with no live chain it starts one in that commit. So a lease is never committed
 * without a chain that will see it:
 * - the chain's end deletes the state the claim checked, so the claim retries and
 *   starts a new chain;
 * - a claim committed between the end's reads and its commit moves the region's
 *   `held` counter, which the end checks, so the end retries and sees the lease.
 * Each tick carries its number, kept in the chain's heartbeat: a redelivered tick finds
 * the number moved on and stops, so a chain never forks into two.
 */
import type { AtomicWriter } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { UnavailableError } from "./errors.ts";
import { newId } from "./ids.ts";
import { keys } from "./keys.ts";
import { log } from "./log.ts";
import { type LeaseEnder, soonestLeaseExpiry, sweepExpired } from "./leases.ts";
import type { LeaseSweepMessage } from "./queue.ts";
import { finishLeaseLosses } from "./resources.ts";

/** Longest gap between two sweeps of a region that holds leases: expiry's worst lateness. */
export const SWEEP_EVERY_MS = 1000;
/** A chain whose heartbeat is older than this is presumed lost; the next claim starts another. */
export const CHAIN_LOST_MS = 30_000;
/** Leases one delivery expires at most; a region with more due sweeps again at once. */
const SWEEP_LIMIT = 1000;

/** The region's current chain. */
export interface SweeperState {
  chain: string;
}

/** When the chain last swept, and which of its ticks is the one in the queue. */
export interface SweeperBeat {
  chain: string;
  at: number;
  /** Only the message of this tick may continue the chain: a redelivered one is stale. */
  tick: number;
}

/** A region's chain as read by a claim or renew. */
export interface SweeperRead {
  state: Deno.KvEntryMaybe<SweeperState>;
  beat: Deno.KvEntryMaybe<SweeperBeat>;
}

/** The keys a SweeperRead reads, in its order (to join a caller's getMany). */
export function sweeperKeys(region: string): [Deno.KvKey, Deno.KvKey] {
  return [keys.sweeper(region), keys.sweeperBeat(region)];
}

/** Reads the region's chain. */
export async function readSweeper(kv: Deno.Kv, region: string): Promise<SweeperRead> {
  const [state, beat] = await kv.getMany<[SweeperState, SweeperBeat]>(sweeperKeys(region));
  return { state, beat };
}

/** Whether the chain read is running: started, and swept recently. */
export function sweeperRunning({ state, beat }: SweeperRead, now: number): boolean {
  return state.value !== null && beat.value?.chain === state.value.chain &&
    beat.value.at >= now - CHAIN_LOST_MS;
}

/**
 * Adds to a commit that creates or moves a lease in `region` (expiring at `expiresAt`
 * or later) what keeps its expiry durable: a check on the chain it read, and a new
 * chain when that one is not running.
 */
export function stageSweeper(
  op: AtomicWriter & Pick<Deno.AtomicOperation, "enqueue">,
  clock: Clock,
  region: string,
  read: SweeperRead,
  expiresAt: number,
): void {
  op.check(read.state);
  const now = clock.now();
  if (sweeperRunning(read, now)) return;
  const chain = newId();
  op.set(keys.sweeper(region), { chain } satisfies SweeperState);
  op.set(keys.sweeperBeat(region), { chain, at: now, tick: 0 } satisfies SweeperBeat);
  op.enqueue(sweepMessage(region, chain, 0), { delay: delayUntil(expiresAt, now) });
}

/**
 * Stages stageSweeper once per serving region of the leases a commit creates or moves,
 * timed for the soonest expiry among that region's leases.
 */
export function stageSweepers(
  op: AtomicWriter & Pick<Deno.AtomicOperation, "enqueue">,
  clock: Clock,
  leases: Iterable<{ servedBy: string; expiresAt: number }>,
  readOf: (region: string) => SweeperRead,
): void {
  const soonest = new Map<string, number>();
  for (const { servedBy, expiresAt } of leases) {
    soonest.set(servedBy, Math.min(soonest.get(servedBy) ?? expiresAt, expiresAt));
  }
  for (const [region, expiresAt] of soonest) {
    stageSweeper(op, clock, region, readOf(region), expiresAt);
  }
}

/** Starts the region's chain unless one is running, for a lease already committed. */
export async function ensureSweeper(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  expiresAt: number,
): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const read = await readSweeper(kv, region);
    if (sweeperRunning(read, clock.now())) return;
    const op = kv.atomic();
    stageSweeper(op, clock, region, read, expiresAt);
    if ((await op.commit()).ok) return;
  }
  throw new UnavailableError(`Cannot start the expiry sweep of region "${region}": contention`);
}

/** What a sweep delivery did. */
export type SweepOutcome = "swept" | "ended" | "stale";

/**
 * Handles one `lease.sweep` delivery: expires the region's due leases, then either
 * enqueues the next tick or, with no lease left, ends the chain. A message of a chain
 * that was replaced or ended, or of a tick already handled (queue delivery is at least
 * once), does nothing: each tick continues its chain once.
 */
export async function sweepRegion(
  kv: Deno.Kv,
  clock: Clock,
  message: LeaseSweepMessage,
  ender?: LeaseEnder,
): Promise<SweepOutcome> {
  const { region, chain, tick } = message;
  if (!isCurrentTick(await readSweeper(kv, region), message)) return "stale";
  let expired = 0;
  try {
    expired = await sweepExpired(kv, clock, region, SWEEP_LIMIT, ender);
  } catch (error) {
    // The chain must outlive a failed pass (a throw here would risk the message's retries).
    log("warn", "lease sweep pass failed; the next tick retries", { region, error: String(error) });
  }
  try {
    // A removal's lease loss cut short (a crash, a failure after its commit) ends here.
    await finishLeaseLosses(kv, clock, region);
  } catch (error) {
    log("warn", "reading the lease losses to finish failed; the next tick retries", {
      region,
      error: String(error),
    });
  }
  for (let attempt = 0; attempt < 10; attempt++) {
    // `held` is read before the expiry index, so a claim committed after this read
    // makes the end's check fail (see the module comment).
    const [state, beat, held] = await kv.getMany<[SweeperState, SweeperBeat, unknown]>([
      ...sweeperKeys(region),
      keys.counter(region, "held"),
    ]);
    if (!isCurrentTick({ state, beat }, message)) return "stale";
    const next = await soonestLeaseExpiry(kv, region);
    const op = kv.atomic().check(state, beat);
    if (next === null) {
      op.check(held).delete(keys.sweeper(region)).delete(keys.sweeperBeat(region));
      if ((await op.commit()).ok) return "ended";
      continue;
    }
    const now = clock.now();
    // Still due after a pass that expired nothing: wait a tick rather than spin.
    const delay = next <= now && expired === 0 ? SWEEP_EVERY_MS : delayUntil(next, now);
    op.set(keys.sweeperBeat(region), { chain, at: now, tick: tick + 1 } satisfies SweeperBeat)
      .enqueue(sweepMessage(region, chain, tick + 1), { delay });
    if ((await op.commit()).ok) return "swept";
  }
  throw new UnavailableError(`Cannot sweep region "${region}": too many concurrent changes`);
}

/** Whether `message` is the tick its chain waits for (not a redelivery, not a dead chain's). */
function isCurrentTick({ state, beat }: SweeperRead, { chain, tick }: LeaseSweepMessage): boolean {
  return state.value?.chain === chain && beat.value?.chain === chain && beat.value.tick === tick;
}

function sweepMessage(region: string, chain: string, tick: number): LeaseSweepMessage {
  return { type: "lease.sweep", region, chain, tick };
}

/** Milliseconds from `now` to `at`, within [0, SWEEP_EVERY_MS]. */
function delayUntil(at: number, now: number): number {
  return Math.min(SWEEP_EVERY_MS, Math.max(0, at - now));
}
