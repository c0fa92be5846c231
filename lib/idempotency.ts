/**
 * Idempotency records: what a claim's Idempotency-Key remembers, and how long. A key must
 * be remembered at least as long as the lease it produced (SPEC), and renewals can keep a
 * lease alive indefinitely, so a renew that carries the lease close to its key's expiry
 * writes the key again with a later one.
 */
import type { AtomicWriter } from "./atomic.ts";
import type { GrantDraft } from "./allocate.ts";
import type { Clock } from "./clock.ts";
import { keys } from "./keys.ts";
import type { ClaimRecord } from "./leases.ts";

/** Idempotency keys outlive the lease they produced by this much. */
export const IDEMPOTENCY_GRACE_MS = 24 * 3600 * 1000;
/** A renew writes the key again when the lease would end less than this before the key does. */
const REFRESH_MARGIN_MS = 3600 * 1000;

/** What an idempotency key remembers: the request's digest and the first answer. */
export interface IdempotencyRecord {
  bodyHash: string;
  grant: GrantDraft;
  commitIndex: number;
  /**
   * The claim commit's versionstamp, once a renew has written the record again (the
   * entry's own versionstamp then no longer is the claim's, which the tokens come from).
   */
  versionstamp?: string;
}

/** The versionstamp of the commit that granted the remembered claim. */
export function grantVersionstamp(entry: Deno.KvEntry<IdempotencyRecord>): string {
  return entry.value.versionstamp ?? entry.versionstamp;
}

/** Where a claim's idempotency record lives, if it was asked for with a key. */
export function idempotencyKeyOf(record: ClaimRecord): Deno.KvKey | null {
  return record.idempotency
    ? keys.idempotency(record.region, record.caller, record.idempotency.key)
    : null;
}

/** Whether renewing `record` until `leaseEnd` must also write its key again. */
export function needsKeyRefresh(record: ClaimRecord, leaseEnd: number): boolean {
  return record.idempotency !== undefined &&
    leaseEnd + REFRESH_MARGIN_MS > record.idempotency.expiresAt;
}

/**
 * Adds the key's rewrite to a renew's atomic (checked as read), expiring a grace after the
 * renewed lease; returns the renewed record with the key's new expiry. A record already
 * gone cannot be written again: the claim then forgets its key.
 */
export function stageKeyRefresh(
  op: AtomicWriter,
  clock: Clock,
  entry: Deno.KvEntryMaybe<IdempotencyRecord>,
  renewed: ClaimRecord,
): ClaimRecord {
  const { idempotency: _, ...forgotten } = renewed;
  if (entry.versionstamp === null || renewed.idempotency === undefined) return forgotten;
  const expireIn = renewed.expiresAt - clock.now() + IDEMPOTENCY_GRACE_MS;
  op.check(entry);
  op.set(
    entry.key,
    { ...entry.value, versionstamp: grantVersionstamp(entry) } satisfies IdempotencyRecord,
    { expireIn },
  );
  return { ...renewed, idempotency: { ...renewed.idempotency, expiresAt: clock.now() + expireIn } };
}
