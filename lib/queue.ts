/**
 * Queue messages (a zod discriminated union, parsed on delivery) and their handler.
 * Delivery is at least once, so every branch is idempotent.
 */
import { z } from "zod";
import type { StatusApplier } from "./applier.ts";
import type { Clock } from "./clock.ts";
import { QueuedStatusUpdate, RegionName } from "./schemas.ts";
import { expireIfDue, getClaimEntry, type LeaseEnder } from "./leases.ts";
import { NotFoundError } from "./errors.ts";
import { log } from "./log.ts";
import { deferStatus } from "./status.ts";
import { ensureSweeper, sweepRegion } from "./sweeper.ts";

/** One tick of a region's expiry sweep chain (sweeper.ts). */
export const LeaseSweepMessage = z.strictObject({
  type: z.literal("lease.sweep"),
  region: RegionName,
  chain: z.string(),
  tick: z.number().int().nonnegative(),
});
export type LeaseSweepMessage = z.infer<typeof LeaseSweepMessage>;

/**
 * One lease's expiry, as versions before the sweep chain enqueued for every claim and
 * renew. Still handled, so a deploy never strands the messages already in the queue.
 */
export const LeaseExpireMessage = z.strictObject({
  type: z.literal("lease.expire"),
  claimId: z.string(),
  expiresAt: z.number().int(),
});
export type LeaseExpireMessage = z.infer<typeof LeaseExpireMessage>;

export const StatusBatchMessage = z.strictObject({
  type: z.literal("status.batch"),
  id: z.string(),
  region: RegionName,
  enqueuedAt: z.number().int(),
  updates: z.array(QueuedStatusUpdate),
});
export type StatusBatchMessage = z.infer<typeof StatusBatchMessage>;

export const QueueMessage = z.discriminatedUnion("type", [
  LeaseSweepMessage,
  LeaseExpireMessage,
  StatusBatchMessage,
]);
export type QueueMessage = z.infer<typeof QueueMessage>;

/** Dependencies of the queue handler. */
export interface QueueDeps {
  kv: Deno.Kv;
  clock: Clock;
  applier: StatusApplier;
  /** Lets a sweep expire many leases in shared commits (alone, one by one, without it). */
  ender?: LeaseEnder;
}

/** What a delivery did, for tests and logs. */
export type QueueOutcome =
  | "swept"
  | "ended"
  | "expired"
  | "rescheduled"
  | "stale"
  | "ignored"
  | "applied"
  | "deferred";

/**
 * Handles one delivery. An unparseable message is dropped (logged), never retried
 * forever, except a status batch this version cannot read (say, one a newer version
 * wrote): that one throws, so its retries end in its dead letter, which takes it out of
 * the region's lag; dropped, its pending entry would hold the lag up for ever. A
 * transient failure throws, so the queue redelivers it.
 */
export async function handleQueueMessage(deps: QueueDeps, raw: unknown): Promise<QueueOutcome> {
  try {
    return await handle(deps, raw);
  } catch (error) {
    // Deno prints a failed handler as plain text; operators query the JSON lines. The line
    // must never replace the error it reports (a message unread may hold anything).
    try {
      log("warn", "a queue message failed; the queue retries it", {
        ...describeMessage(raw),
        error: String(error),
      });
    } catch {
      // The error below still reaches Deno's own output.
    }
    throw error;
  }
}

/** Longest string a failure line copies from a message it may not have been able to read. */
const DESCRIBED_CHARS = 200;

/** What a log line says of a queue message: its type, region, id and claim id, as strings. */
function describeMessage(raw: unknown): Record<string, string> {
  if (typeof raw !== "object" || raw === null) return { type: typeof raw };
  const fields: Record<string, string> = {};
  for (const name of ["type", "region", "id", "claimId"]) {
    const value = (raw as Record<string, unknown>)[name];
    if (typeof value === "string") fields[name] = value.slice(0, DESCRIBED_CHARS);
  }
  return fields;
}

async function handle(deps: QueueDeps, raw: unknown): Promise<QueueOutcome> {
  const parsed = QueueMessage.safeParse(raw);
  if (!parsed.success) {
    const type = typeof raw === "object" && raw !== null && "type" in raw
      ? String(raw.type)
      : typeof raw;
    const why = whyUnreadable(parsed.error);
    if (type === "status.batch") {
      throw new Error(`unreadable status batch (${why}): retried until dead-lettered`);
    }
    log("error", "dropping malformed queue message", { type, why });
    return "ignored";
  }
  const message = parsed.data;
  switch (message.type) {
    case "lease.sweep":
      return await sweepRegion(deps.kv, deps.clock, message, deps.ender);
    case "lease.expire":
      return await onLeaseExpire(deps, message);
    case "status.batch": {
      const delayMs = deps.applier.deferral(message.region);
      if (delayMs !== null) {
        await deferStatus(deps.kv, message, delayMs);
        return "deferred";
      }
      await deps.applier.submit(message);
      return "applied";
    }
  }
}

/** Why a queue message does not parse, for logs and operators: its first issue. */
export function whyUnreadable(error: z.ZodError): string {
  const issue = error.issues[0];
  return `${issue?.path.join(".") || "message"}: ${issue?.message}`;
}

async function onLeaseExpire(
  { kv, clock, ender }: Pick<QueueDeps, "kv" | "clock" | "ender">,
  message: LeaseExpireMessage,
): Promise<QueueOutcome> {
  let entry;
  try {
    entry = await getClaimEntry(kv, message.claimId);
  } catch (error) {
    if (error instanceof NotFoundError) return "stale";
    throw error;
  }
  if (entry.value.state !== "active") return "stale";
  if (await expireIfDue(kv, clock, message.claimId, ender)) return "expired";
  // Early, or the lease was renewed: the region's sweep chain expires it when it is due.
  await ensureSweeper(kv, clock, entry.value.servedBy, entry.value.expiresAt);
  return "rescheduled";
}
