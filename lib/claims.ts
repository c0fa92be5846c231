/** Claims after allocation: renewal, release, revocation, listing. */
import { digestsEqual, sha256Hex } from "./auth.ts";
import type { AtomicWriter } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { ForbiddenError, LeaseLostError, UnavailableError } from "./errors.ts";
import { keys } from "./keys.ts";
import { cursorError, getAll, kvCursorOf, markWrite, nextPageCursor } from "./kv.ts";
import {
  type ClaimRecord,
  claimView,
  endLease,
  endLiveLease,
  fencingTokenOf,
  getClaimEntry,
  grantedLeaseMs,
  isPastExpiry,
  type LeaseEnd,
  type LeaseEnder,
  recordAsOf,
  refuseExpired,
} from "./leases.ts";
import {
  idempotencyKeyOf,
  type IdempotencyRecord,
  needsKeyRefresh,
  stageKeyRefresh,
} from "./idempotency.ts";
import type { ResourceSpec } from "./pool.ts";
import { getRegionConfig } from "./regions.ts";
import { finishUnfinishedLosses } from "./resources.ts";
import type { Claim, ClaimState, RegionConfig } from "./schemas.ts";
import { stageSweeper, type SweeperBeat, sweeperKeys, type SweeperState } from "./sweeper.ts";

/** Checks a caller may touch a claim (its region scope), before anything is revealed or changed. */
export type ClaimAccess = (record: ClaimRecord) => void;

function secretGuard(
  secret: string | undefined,
  access: ClaimAccess,
): (record: ClaimRecord) => void {
  const presented = secret ? sha256Hex(secret) : null;
  return (record) => {
    access(record);
    if (presented === null) {
      throw new ForbiddenError("The Allot-Claim-Secret header is required for this claim");
    }
    if (!digestsEqual(presented, record.secretHash)) {
      throw new ForbiddenError(`The Allot-Claim-Secret does not match claim "${record.id}"`);
    }
  };
}

/** Throws 409 (after recording the expiry) if the lease has run out. */
async function refuseIfExpired(kv: Deno.Kv, clock: Clock, record: ClaimRecord): Promise<void> {
  if (isPastExpiry(record, clock.now())) await refuseExpired(kv, clock, record.id);
}

/** A renew as the routes ask for it: who may renew (secret and scope), and for how long. */
export interface RenewJob {
  /** Throws to refuse (403): checked against the claim as read, before anything is written. */
  guard: (record: ClaimRecord) => void;
  leaseMs?: number;
}

/** A renewed claim as committed. */
export interface Renewed {
  claim: Claim;
  consistencyToken: string;
}

/** Something that renews leases (the group committer, or renewAlone). */
export interface Renewer {
  renew(claimId: string, job: RenewJob): Promise<Renewed>;
}

/** Extends a live lease (capped by the region's lease.maxMs). 403 on a bad secret, 409 if lost. */
export function renewClaim(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  request: { secret: string | undefined; leaseMs?: number; access: ClaimAccess },
  renewer?: Renewer,
): Promise<Renewed> {
  const job: RenewJob = {
    guard: secretGuard(request.secret, request.access),
    leaseMs: request.leaseMs,
  };
  return renewer ? renewer.renew(claimId, job) : renewAlone(kv, clock, claimId, job);
}

/**
 * Refuses a renew that can never succeed: a bad secret or scope (403), a lease already
 * ended (409). A lease past its expiry is for the caller to settle (refuseIfExpired).
 */
export function guardRenew(record: ClaimRecord, job: RenewJob): void {
  job.guard(record);
  if (record.state !== "active") {
    throw new LeaseLostError(`Claim "${record.id}" is no longer active: it was ${record.state}`);
  }
}

/** The keys a renew reads besides the claim: region config, spec, sweep chain (state, beat). */
export function renewReadKeys(
  record: ClaimRecord,
): [Deno.KvKey, Deno.KvKey, Deno.KvKey, Deno.KvKey] {
  return [
    keys.regionConfig(record.region),
    keys.resource(record.servedBy, record.resource),
    ...sweeperKeys(record.servedBy),
  ];
}

/** The claim as a renew leaves it: its new expiry, clamped to the region's lease.maxMs. */
export function renewedRecord(
  clock: Clock,
  entry: Deno.KvEntry<ClaimRecord>,
  config: RegionConfig | null,
  leaseMs: number | undefined,
): ClaimRecord {
  const record = entry.value;
  const nextLeaseMs = grantedLeaseMs(
    leaseMs,
    record.leaseMs,
    config?.lease.maxMs ?? record.leaseMs,
  );
  return {
    ...record,
    leaseMs: nextLeaseMs,
    expiresAt: clock.now() + nextLeaseMs,
    fencingToken: fencingTokenOf(entry),
  };
}

/**
 * Adds a renew to an atomic: a check on the claim as read, the `renewed` record, its
 * expiry-index entry moved. The commit must also stage the serving region's sweeper,
 * once however many renews it carries, and mark the write.
 */
export function stageRenew(
  op: AtomicWriter,
  entry: Deno.KvEntry<ClaimRecord>,
  renewed: ClaimRecord,
): void {
  const record = entry.value;
  op.check(entry);
  op.set(entry.key, renewed);
  op.delete(keys.lease(record.servedBy, record.expiresAt, record.id));
  op.set(keys.lease(record.servedBy, renewed.expiresAt, record.id), null);
}

/**
 * Renews one lease with its own CAS loop; also what a renew in a failed group falls back
 * to, and what renews its Idempotency-Key with it when the lease nears the key's expiry.
 */
export async function renewAlone(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  job: RenewJob,
): Promise<Renewed> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const entry = await getClaimEntry(kv, claimId);
    const record = entry.value;
    guardRenew(record, job);
    await refuseIfExpired(kv, clock, record);
    const [config, spec, sweeperState, sweeperBeat] = await kv.getMany<
      [RegionConfig, ResourceSpec, SweeperState, SweeperBeat]
    >(renewReadKeys(record));
    if (spec.value === null || spec.value.state === "gone") {
      await loseToGoneResource(kv, clock, record, spec.value);
    }
    const op = kv.atomic();
    let renewed = renewedRecord(clock, entry, config.value, job.leaseMs);
    const idemKey = idempotencyKeyOf(record);
    if (idemKey !== null && needsKeyRefresh(record, renewed.expiresAt)) {
      const idem = await kv.get<IdempotencyRecord>(idemKey);
      renewed = stageKeyRefresh(op, clock, idem, renewed);
    }
    stageRenew(op, entry, renewed);
    stageSweeper(
      op,
      clock,
      record.servedBy,
      { state: sweeperState, beat: sweeperBeat },
      renewed.expiresAt,
    );
    markWrite(op, record.servedBy);
    // Again after the last read: the lease may have run out meanwhile, and must not be revived.
    await refuseIfExpired(kv, clock, record);
    const res = await op.commit();
    if (res.ok) {
      const view = claimView({ key: entry.key, value: renewed, versionstamp: res.versionstamp });
      return { claim: view, consistencyToken: res.versionstamp };
    }
  }
  throw new UnavailableError(`Cannot renew claim "${claimId}": too many concurrent changes`);
}

/**
 * Ends a lease whose resource is gone or deleted as lost, then refuses the renew with 409.
 * A removal whose lease loss was cut short (a crash, a store error) left its record: finishing
 * it ends this lease with the removal's own reason.
 */
async function loseToGoneResource(
  kv: Deno.Kv,
  clock: Clock,
  record: ClaimRecord,
  spec: ResourceSpec | null,
): Promise<never> {
  await finishUnfinishedLosses(kv, clock, [{ region: record.servedBy, id: record.resource }]);
  const fate = spec === null ? "deleted" : "gone";
  await endLease(kv, clock, record.id, { state: "lost", reason: `resource ${fate}` })
    .catch((error) => {
      if (!(error instanceof LeaseLostError)) throw error;
    });
  throw new LeaseLostError(`Claim "${record.id}" is no longer active: its resource is ${fate}`);
}

/**
 * Releases a live lease, freeing its slot. 403 on a bad secret; 409 if the lease ended
 * some other way (expired, lost, revoked). A claim already released answers as its
 * release did, so a client that lost the first answer can send the release again.
 */
export async function releaseClaim(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  request: { secret: string | undefined; access: ClaimAccess },
  ender?: LeaseEnder,
): Promise<{ consistencyToken: string }> {
  const guard = secretGuard(request.secret, request.access);
  const end: LeaseEnd = { state: "released", reason: null, guard };
  try {
    const { consistencyToken } = await endLiveLease(kv, clock, claimId, end, ender);
    return { consistencyToken };
  } catch (error) {
    if (!(error instanceof LeaseLostError)) throw error;
    const entry = await getClaimEntry(kv, claimId);
    if (entry.value.state !== "released") throw error;
    guard(entry.value);
    return { consistencyToken: entry.versionstamp };
  }
}

/**
 * Ends a live lease now on an operator's word; the claim keeps the reason. A lease past
 * its expiry is expired instead, and the answer is 409.
 */
export async function revokeClaim(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  request: { reason: string; access: ClaimAccess },
): Promise<{ claim: Claim; consistencyToken: string }> {
  const { entry, consistencyToken } = await endLiveLease(kv, clock, claimId, {
    state: "lost",
    reason: `revoked: ${request.reason}`,
    guard: request.access,
  });
  return { claim: claimView(entry), consistencyToken };
}

/** Filters and a page position for listing a region's claims. */
export interface ClaimQuery {
  holder?: string;
  state?: ClaimState;
  /**
   * Only claims asked for in these regions, wherever they were served: what a
   * region-scoped token may see, as for a single claim's read. Null or absent: all.
   */
  askedIn?: ReadonlySet<string> | null;
  cursor?: string;
  limit: number;
}

/**
 * A page of the region's claims (those served by its pool), newest id last; active ones
 * (`state: "active"`) soonest expiry first, read from the lease index. Filtering happens
 * while scanning, so a page may hold fewer than `limit` items and still have a cursor.
 */
export async function listClaims(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  query: ClaimQuery,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<{ items: Claim[]; cursor: string | null }> {
  await getRegionConfig(kv, region, consistency);
  if (query.state === "active") {
    return await listActiveClaims(kv, clock, region, query, consistency);
  }
  const scanBudget = query.limit * 10;
  const listing = `claims/${region}`;
  const prefix = keys.claims(region);
  const iter = kv.list<ClaimRecord>({ prefix }, {
    cursor: kvCursorOf(listing, query.cursor),
    limit: scanBudget,
    consistency,
  });
  const items: Claim[] = [];
  let scanned = 0;
  let full = false;
  const now = clock.now();
  try {
    for await (const entry of iter) {
      scanned++;
      const record = recordAsOf(entry.value, now);
      if (
        (query.holder === undefined || record.holder === query.holder) &&
        (query.state === undefined || record.state === query.state) &&
        (!query.askedIn || query.askedIn.has(record.region))
      ) {
        items.push(claimView(entry, now));
        if (items.length === query.limit) {
          full = true;
          break;
        }
      }
    }
  } catch (error) {
    throw cursorError(error);
  }
  if (!full && scanned < scanBudget) return { items, cursor: null };
  // iter.cursor: past the last entry scanned.
  return { items, cursor: await nextPageCursor(kv, listing, prefix, iter.cursor, consistency) };
}

/**
 * The region's active claims from its lease index (live leases by expiry), from the first
 * lease not yet run out, so a page is full while there are more, however many ended or
 * unswept claims the region keeps. Each lease read yields at most one item, so reading no
 * more leases than items still wanted never scans past the page's last item, and the
 * index's own cursor is the page's. A renew moves its lease in the index: a claim renewed
 * between two reads of one page is listed once, one renewed between pages may come twice
 * or not at all (documented).
 */
async function listActiveClaims(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  query: ClaimQuery,
  consistency: Deno.KvConsistencyLevel,
): Promise<{ items: Claim[]; cursor: string | null }> {
  const listing = `claims/${region}/active`;
  const prefix = keys.leases(region);
  const scanBudget = query.limit * 10;
  const items: Claim[] = [];
  const listed = new Set<string>();
  const now = clock.now();
  const start = keys.leasesUntil(region, now + 1);
  let cursor = kvCursorOf(listing, query.cursor);
  let scanned = 0;
  while (items.length < query.limit && scanned < scanBudget) {
    const wanted = Math.min(query.limit - items.length, scanBudget - scanned);
    const iter = kv.list({ prefix, start }, { cursor, limit: wanted, consistency });
    const ids: string[] = [];
    try {
      for await (const lease of iter) ids.push(lease.key[lease.key.length - 1] as string);
    } catch (error) {
      throw cursorError(error);
    }
    scanned += ids.length;
    cursor = iter.cursor;
    const records = await getAll<ClaimRecord>(
      kv,
      ids.map((id) => keys.claim(region, id)),
      consistency,
    );
    for (const entry of records) {
      if (entry.versionstamp === null) continue;
      const record = recordAsOf(entry.value, now);
      if (
        record.state === "active" && !listed.has(record.id) &&
        (query.holder === undefined || record.holder === query.holder) &&
        (!query.askedIn || query.askedIn.has(record.region))
      ) {
        listed.add(record.id);
        items.push(claimView(entry as Deno.KvEntry<ClaimRecord>, now));
      }
    }
    if (ids.length < wanted) return { items, cursor: null };
  }
  return { items, cursor: await nextPageCursor(kv, listing, prefix, cursor!, consistency) };
}
