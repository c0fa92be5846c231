/**
 * Queue messages (a zod discriminated union, parsed on delivery) and their handler.
 * Delivery is at least once, so every branch is idempotent.
 */
import { z } from "zod";
import type { StatusApplier } from "./applier.ts";
import type { Clock } from "./clock.ts";
import { RegionName, StatusUpdate } from "./schemas.ts";
import { expireIfDue, getClaimEntry } from "./leases.ts";
import { NotFoundError } from "./errors.ts";
import { log } from "./log.ts";

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
  updates: z.array(StatusUpdate),
});
export type StatusBatchMessage = z.infer<typeof StatusBatchMessage>;

export const QueueMessage = z.discriminatedUnion("type", [LeaseExpireMessage, StatusBatchMessage]);
export type QueueMessage = z.infer<typeof QueueMessage>;

/** Dependencies of the queue handler. */
export interface QueueDeps {
  kv: Deno.Kv;
  clock: Clock;
  applier: StatusApplier;
}

/** What a delivery did, for tests and logs. */
export type QueueOutcome = "expired" | "rescheduled" | "stale" | "ignored" | "applied";

/**
 * Handles one delivery. An unparseable message is dropped (logged), never retried
 * forever; a transient failure throws, so the queue redelivers it.
 */
export async function handleQueueMessage(deps: QueueDeps, raw: unknown): Promise<QueueOutcome> {
  const parsed = QueueMessage.safeParse(raw);
  if (!parsed.success) {
    log("error", "dropping malformed queue message", { raw });
    return "ignored";
  }
  const message = parsed.data;
  switch (message.type) {
    case "lease.expire":
      return await onLeaseExpire(deps, message);
    case "status.batch":
      await deps.applier.submit(message);
      return "applied";
  }
}

async function onLeaseExpire(
  { kv, clock }: Pick<QueueDeps, "kv" | "clock">,
  message: LeaseExpireMessage,
): Promise<QueueOutcome> {
  if (await expireIfDue(kv, clock, message.claimId)) return "expired";
  let entry;
  try {
    entry = await getClaimEntry(kv, message.claimId);
  } catch (error) {
    if (error instanceof NotFoundError) return "stale";
    throw error;
  }
  // A timer may fire a little before the lease's own clock says it is due; the
  // renewed case has its own, later message, so only the current expiry is re-armed.
  if (entry.value.state === "active" && entry.value.expiresAt === message.expiresAt) {
    const delay = Math.max(0, message.expiresAt - clock.now()) + 1;
    await kv.enqueue(message, { delay });
    return "rescheduled";
  }
  return "stale";
}
