/**
 * Allocation: how a claim becomes a lease. Every claim commits with checks on the
 * free-index entry and the slot it read (see pool.ts), alone or in a group commit
 * with others; a stale read costs a retry, never a double allocation.
 */
import { newId } from "./ids.ts";
import type { AtomicWriter } from "./atomic.ts";
import { digestsEqual, sha256Hex } from "./auth.ts";
import { encodeBase64Url } from "./base64.ts";
import type { Clock } from "./clock.ts";
import { AllotError, NoCapacityError, UnavailableError, ValidationError } from "./errors.ts";
import { type ClaimRoute, routeClaim } from "./fallback.ts";
import { regionNotFound } from "./regions.ts";
import { keys } from "./keys.ts";
import { log } from "./log.ts";
import { CommitEffects } from "./kv.ts";
import {
  type ClaimRecord,
  claimStateNow,
  describeClaim,
  grantedLeaseMs,
  soonestLeaseExpiry,
  sweepExpired,
} from "./leases.ts";
import { type FreeSlot, type HeldSlot, labelsMatch } from "./pool.ts";
import type { ClaimGrant, ClaimInput, ClaimState } from "./schemas.ts";
import { Semaphore } from "./semaphore.ts";
import { readSweeper, stageSweeper } from "./sweeper.ts";
import { inSpan, instruments } from "./telemetry.ts";
import { grantVersionstamp, IDEMPOTENCY_GRACE_MS, type IdempotencyRecord } from "./idempotency.ts";

/** Conflicting commits a lone claim survives before answering 503 (each retry reads afresh). */
const MAX_CLAIM_ATTEMPTS = 32;
/** Free entries read per attempt; the claim picks one at random so racers spread out. */
const CANDIDATES_PER_ATTEMPT = 8;

/** A grant before its commit gives it tokens. */
export type GrantDraft = Omit<ClaimGrant, "fencingToken" | "consistencyToken">;

/** A claim request, as the route hands it over. */
export interface ClaimRequest {
  region: string;
  caller: string;
  input: ClaimInput;
  idempotencyKey?: string;
}

/** A claim request after its idempotency pre-check: what the allocators work with. */
export interface PreparedClaim {
  request: ClaimRequest;
  /** Digest of the body, remembered with the idempotency key ("" without one). */
  bodyHash: string;
  idemKey: Deno.KvKey | null;
}

/** A granted claim; `replayed` when an idempotency key returned an earlier answer. */
export interface ClaimOutcome {
  grant: ClaimGrant;
  replayed: boolean;
  /** Claims in the commit that granted it (0 for a replay). */
  groupSize: number;
  /**
   * A replay's claim as it stands now: the replayed answer says `active`, but the lease may
   * have been released, revoked or run out since (`ended` once its record is gone).
   */
  stateNow?: ClaimState | "ended";
}

/** Something that allocates prepared claims (the group committer, or a lone CAS). */
export interface Allocator {
  allocate(claim: PreparedClaim): Promise<ClaimOutcome>;
}

/**
 * Claims one free slot in the request's region (or its backup in fallback). Replays
 * the first answer for a known idempotency key; otherwise hands the claim to
 * `allocator` (group commit) or allocates it alone.
 */
export function createClaim(
  kv: Deno.Kv,
  clock: Clock,
  request: ClaimRequest,
  allocator?: Allocator,
): Promise<ClaimOutcome> {
  return inSpan("allot.claim", { "allot.region": request.region }, async (span) => {
    try {
      const outcome = await claimOnce(kv, clock, request, allocator);
      if (outcome.replayed) outcome.stateNow = await claimStateNow(kv, clock, outcome.grant.id);
      span.setAttributes({
        "allot.served_by": outcome.grant.servedBy,
        "allot.replayed": outcome.replayed,
        "allot.group_size": outcome.groupSize,
      });
      instruments.claims.add(1, {
        region: request.region,
        served_by: outcome.grant.servedBy,
        outcome: outcome.replayed ? "replayed" : "granted",
      });
      return outcome;
    } catch (error) {
      const outcome = error instanceof AllotError ? error.slug : "error";
      instruments.claims.add(1, { region: request.region, outcome });
      throw error;
    }
  });
}

async function claimOnce(
  kv: Deno.Kv,
  clock: Clock,
  request: ClaimRequest,
  allocator?: Allocator,
): Promise<ClaimOutcome> {
  const idemKey = request.idempotencyKey === undefined
    ? null
    : keys.idempotency(request.region, request.caller, request.idempotencyKey);
  const bodyHash = idemKey ? sha256Hex(canonicalJson(request.input)) : "";
  const allocate = async (): Promise<ClaimOutcome> => {
    if (idemKey) {
      // A key outlives a deletion of its region: no replay while the region is gone.
      const [earlier, config] = await kv.getMany<[IdempotencyRecord, unknown]>([
        idemKey,
        keys.regionConfig(request.region),
      ]);
      if (config.versionstamp === null) throw regionNotFound(request.region);
      if (earlier.versionstamp !== null) return replay(earlier, bodyHash);
    }
    const prepared = { request, bodyHash, idemKey };
    if (allocator) return await allocator.allocate(prepared);
    return await allocateAlone(kv, clock, prepared, await routeClaim(kv, clock, request.region));
  };
  return idemKey ? await oneAtATime(kv, idemKey, allocate) : await allocate();
}

/** Keyed claims in flight, per KV handle and idempotency key: the last one's work. */
const keyedInFlight = new WeakMap<Deno.Kv, Map<string, Promise<unknown>>>();

/**
 * Runs the claims of one idempotency key one after another in this isolate: a retry sent
 * while its first request still runs then replays that request's claim, even when the first
 * found its slot only after a sweep, where the retry could have found neither the slot nor
 * the claim yet and answered 503. (Isolates sharing a store still race; a retry then
 * replays.)
 */
function oneAtATime<T>(kv: Deno.Kv, idemKey: Deno.KvKey, work: () => Promise<T>): Promise<T> {
  let running = keyedInFlight.get(kv);
  if (!running) keyedInFlight.set(kv, running = new Map());
  const id = JSON.stringify(idemKey);
  const turn = (running.get(id) ?? Promise.resolve()).catch(() => {}).then(work);
  running.set(id, turn);
  const forget = () => {
    if (running.get(id) === turn) running.delete(id);
  };
  turn.then(forget, forget);
  return turn;
}

/**
 * Allocates one claim with its own CAS loop: from the routed pool, then (when a
 * backup ran out between routing and claiming) from the region's own pool.
 */
export async function allocateAlone(
  kv: Deno.Kv,
  clock: Clock,
  claim: PreparedClaim,
  route: ClaimRoute,
): Promise<ClaimOutcome> {
  const region = claim.request.region;
  const pools = route.servedBy === region ? [region] : [route.servedBy, region];
  let refused: NoCapacityError | null = null;
  let busy: SearchesBusyError | null = null;
  for (const servedBy of pools) {
    try {
      return await allocateFrom(kv, clock, claim, route, servedBy);
    } catch (error) {
      // A pool with too many searches for labels in line may be full anyway; the next may not.
      if (error instanceof SearchesBusyError) busy = error;
      else if (error instanceof NoCapacityError) refused = error;
      else throw error;
    }
  }
  if (busy !== null) throw busy; // a retry may find a slot, sooner than a lease ends
  // In fallback or lagging, the retry may be served by the other pool, or by a backup this
  // claim did not try (refused as exhausted): the soonest lease to end in any of them counts.
  const backup = route.config.backup;
  const retryPools = backup !== null && !pools.includes(backup) &&
      (route.mode === "fallback" || route.note !== null)
    ? [...pools, backup]
    : pools;
  if (retryPools.length === 1) throw refused!;
  const ends = await Promise.all(retryPools.map((pool) => soonestLeaseExpiry(kv, pool)));
  const soonest = Math.min(...ends.map((end) => end ?? Infinity));
  throw new NoCapacityError(
    refused!.message,
    soonest === Infinity ? refused!.retryAfterSeconds : secondsUntil(clock, soonest),
  );
}

async function allocateFrom(
  kv: Deno.Kv,
  clock: Clock,
  claim: PreparedClaim,
  route: ClaimRoute,
  servedBy: string,
): Promise<ClaimOutcome> {
  const { region, input } = claim.request;
  let swept = false;
  for (let attempt = 0; attempt < MAX_CLAIM_ATTEMPTS; attempt++) {
    const readAt = clock.now();
    const [candidates, sweeper] = await Promise.all([
      input.labels === undefined
        ? findFreeSlots(kv, servedBy, undefined, CANDIDATES_PER_ATTEMPT)
        : searchLabelled(kv, servedBy, input.labels, attempt === 0 ? region : null),
      readSweeper(kv, servedBy),
    ]);
    if (candidates.length === 0) {
      // Read again whatever the sweep ended: another isolate may have swept these very
      // leases a moment before, and their slots are free all the same. One sweep (of the
      // 100 most overdue) only: a region far behind answers 503 with Retry-After 1, and
      // each retry sweeps on, rather than every claim that matches nothing waiting longer.
      if (!swept) {
        swept = true;
        await catchUpSweep(kv, clock, servedBy, readAt);
        continue;
      }
      // A duplicate of a request that just took the last slot gets that claim, not a 503.
      const raced = await replayIfKnown(kv, claim);
      if (raced) return raced;
      throw new NoCapacityError(
        `Cannot claim in region "${region}": no ready resource${
          input.labels ? " matching the requested labels" : ""
        } has a free slot${servedBy === region ? "" : ` in backup "${servedBy}"`}`,
        await secondsUntilNextExpiry(kv, clock, servedBy),
      );
    }
    const pick = candidates[Math.floor(Math.random() * candidates.length)];
    const op = kv.atomic();
    const effects = new CommitEffects();
    const draft = stageClaim(op, effects, clock, claim, route, servedBy, pick, 0);
    stageSweeper(op, clock, servedBy, sweeper, clock.now() + draft.leaseMs);
    effects.flush(op);
    const outcome = await commitClaims(kv, op, draft);
    if (outcome.ok) {
      return { grant: withTokens(draft, outcome.versionstamp, 0), replayed: false, groupSize: 1 };
    }
    if (outcome.error !== undefined) throw outcome.error;
    const raced = await replayIfKnown(kv, claim);
    if (raced) return raced;
  }
  throw new UnavailableError(
    `Cannot claim in region "${region}": too much contention, retry shortly`,
  );
}

/**
 * Free entries a search for labels reads at once: a group's per serving pool and labels,
 * and a lone search's before it waits its turn to read the rest (searchLabelled).
 */
export const LABEL_SCAN_LIMIT = 1_000;

/** A lone claim's search for labels refused because too many already wait their turn. */
class SearchesBusyError extends UnavailableError {}

/**
 * A lone search for labels: the first LABEL_SCAN_LIMIT free entries at once; then, when
 * none of them matched and the index holds more, the whole index, at most two such searches
 * at a time per KV handle (one per process in production). A search of the whole index may
 * read every free entry (twice, around its catch-up sweep): 32 callers asking for labels
 * nothing has made every other claim 40× slower while they scanned together. In line, they
 * cost each other time instead, and labels that match early never wait for them. A claim's
 * first search may be refused when 64 already wait (`refuseFor`: the region asked for, named
 * in the 503); a claim that has waited once is not refused for it.
 */
async function searchLabelled(
  kv: Deno.Kv,
  region: string,
  labels: ClaimInput["labels"],
  refuseFor: string | null,
): Promise<Deno.KvEntry<FreeSlot>[]> {
  const early = await scanFreeSlots(kv, region, labels, CANDIDATES_PER_ATTEMPT, LABEL_SCAN_LIMIT);
  if (early.found.length > 0 || early.whole) return early.found;
  const scans = labelledScans(kv);
  // A bounded line: the lone claims waiting in it count towards MAX_LONE_RUNNING, past which
  // the group commit waits for its own lone claims, and so would every other claim.
  if (refuseFor !== null && scans.waiting >= MAX_WAITING_SCANS) {
    throw new SearchesBusyError(
      `Cannot claim in region "${refuseFor}": too many searches for labels under way, retry shortly`,
    );
  }
  return await scans.run(() => findFreeSlots(kv, region, labels, CANDIDATES_PER_ATTEMPT));
}

const LABELLED_SCANS = 2;
/** Searches of the whole index that may wait their turn; past that, 503 at once. */
const MAX_WAITING_SCANS = 64;
const scansByKv = new WeakMap<Deno.Kv, Semaphore>();
function labelledScans(kv: Deno.Kv): Semaphore {
  let scans = scansByKv.get(kv);
  if (!scans) scansByKv.set(kv, scans = new Semaphore(LABELLED_SCANS));
  return scans;
}

/** Catch-up sweeps in flight, per KV handle and region, with the time each began. */
const catchUps = new WeakMap<Deno.Kv, Map<string, { from: number; sweep: Promise<unknown> }>>();

/**
 * Expires what was due in a region at `since` (when the claim found no free slot), once for
 * all the claims of this isolate that found none at about the same moment: each sweeping
 * on its own would race the others to end the same leases. A sweep that began before
 * `since` may have missed leases due since then, so it is not joined.
 */
function catchUpSweep(kv: Deno.Kv, clock: Clock, region: string, since: number) {
  let inFlight = catchUps.get(kv);
  if (!inFlight) catchUps.set(kv, inFlight = new Map());
  const running = inFlight.get(region);
  if (running && running.from >= since) return running.sweep;
  const from = clock.now();
  const sweep = sweepExpired(kv, clock, region).finally(() => {
    if (inFlight.get(region)?.sweep === sweep) inFlight.delete(region);
  });
  inFlight.set(region, { from, sweep });
  return sweep;
}

/**
 * Checks a claim adds to its commit: its free entry, its slot, and its idempotency key.
 * Its commit adds one more per serving region, on that region's sweeper.
 */
export function checksOf(claim: PreparedClaim): number {
  return claim.idemKey ? 3 : 2;
}

/**
 * Adds one claim to an atomic: checks on the free entry and slot it read (and on its
 * idempotency key), the held slot, the claim record, the expiry index; counters and the
 * write mark go to `effects`. The commit must also stage the serving region's sweeper
 * (sweeper.ts), once however many claims it carries. `commitIndex` orders claims within
 * one commit, so their fencing tokens stay distinct.
 */
export function stageClaim(
  op: AtomicWriter,
  effects: CommitEffects,
  clock: Clock,
  claim: PreparedClaim,
  route: ClaimRoute,
  servedBy: string,
  free: Deno.KvEntry<FreeSlot>,
  commitIndex: number,
): GrantDraft {
  const { region, input, caller } = claim.request;
  const [resource, slot] = free.key.slice(-2) as [string, number];
  const { config } = route;
  const leaseMs = grantedLeaseMs(input.leaseMs, config.lease.defaultMs, config.lease.maxMs);
  const now = clock.now();
  const secret = encodeBase64Url(crypto.getRandomValues(new Uint8Array(32)));
  const record: ClaimRecord = {
    id: `${servedBy}.${newId()}`,
    region,
    servedBy,
    resource,
    slot,
    holder: input.holder,
    caller,
    state: "active",
    secretHash: sha256Hex(secret),
    leaseMs,
    createdAt: now,
    expiresAt: now + leaseMs,
    endedAt: null,
    reason: null,
    commitIndex,
    fencingToken: null,
  };
  if (claim.idemKey && claim.request.idempotencyKey !== undefined) {
    record.idempotency = {
      key: claim.request.idempotencyKey,
      expiresAt: now + leaseMs + IDEMPOTENCY_GRACE_MS,
    };
  }
  const slotKey = keys.slot(servedBy, resource, slot);
  op.check(free, { key: slotKey, versionstamp: null });
  op.set(slotKey, { claimId: record.id } satisfies HeldSlot);
  op.delete(free.key);
  op.set(keys.claim(servedBy, record.id), record);
  op.set(keys.lease(servedBy, record.expiresAt, record.id), null);
  effects.count(servedBy, "free", -1);
  effects.count(servedBy, "held", 1);
  // The serving region's mark only: reads of this claim and its listing are served by it,
  // and a backup's claim must leave nothing under a region deleted meanwhile.
  effects.touch(servedBy);
  const routed = servedBy === route.servedBy;
  const draft: GrantDraft = {
    ...describeClaim(record),
    secret,
    mode: route.mode,
    lagMs: routed ? route.lagMs : route.ownLagMs,
    note: routed ? route.note : `backup "${route.servedBy}" ran out; served by "${servedBy}"`,
  };
  if (claim.idemKey) {
    op.check({ key: claim.idemKey, versionstamp: null });
    const remembered: IdempotencyRecord = { bodyHash: claim.bodyHash, grant: draft, commitIndex };
    op.set(claim.idemKey, remembered, { expireIn: leaseMs + IDEMPOTENCY_GRACE_MS });
  }
  return draft;
}

/** A claim atomic's outcome: committed, at `versionstamp`, or not (a conflict, or `error`). */
export type ClaimCommit = { ok: true; versionstamp: string } | { ok: false; error?: unknown };

/**
 * Commits an atomic of claims whose first is `first`. A KV Connect answer can be lost after
 * the write landed: the commit then throws, or Deno's client sends it again and that resend
 * fails its checks against the write itself. Either way the first claim's record tells, so
 * no caller takes a second slot on a retry while the first stays held for nobody; when that
 * record cannot be read either, the outcome is unknown and this throws a 503 rather than
 * let the claims be tried again.
 */
export async function commitClaims(
  kv: Deno.Kv,
  op: Deno.AtomicOperation,
  first: GrantDraft,
): Promise<ClaimCommit> {
  let res: Deno.KvCommitResult | Deno.KvCommitError;
  try {
    res = await op.commit();
  } catch (error) {
    const landed = await landedVersionstamp(kv, first);
    return landed === null ? { ok: false, error } : { ok: true, versionstamp: landed };
  }
  if (res.ok) return { ok: true, versionstamp: res.versionstamp };
  const landed = await landedVersionstamp(kv, first);
  return landed === null ? { ok: false } : { ok: true, versionstamp: landed };
}

/**
 * The versionstamp of a claim's commit, if it landed: its claim record says so, and dates
 * it (a record rewritten since keeps that date in its fencing token). Null when it did not.
 */
async function landedVersionstamp(kv: Deno.Kv, draft: GrantDraft): Promise<string | null> {
  let entry: Deno.KvEntryMaybe<ClaimRecord>;
  try {
    entry = await kv.get<ClaimRecord>(keys.claim(draft.servedBy, draft.id));
  } catch (error) {
    log("warn", "a claim commit's outcome is unknown", { claim: draft.id, error: String(error) });
    throw new UnavailableError(
      "Cannot tell whether the claim committed: the store did not answer; retry with the same Idempotency-Key",
      1,
    );
  }
  if (entry.value === null) return null;
  return entry.value.fencingToken?.slice(0, -4) ?? entry.versionstamp;
}

/** The grant as answered: the commit's versionstamp gives both tokens. */
export function withTokens(
  draft: GrantDraft,
  versionstamp: string,
  commitIndex: number,
): ClaimGrant {
  return {
    ...draft,
    fencingToken: versionstamp + commitIndex.toString(16).padStart(4, "0"),
    consistencyToken: versionstamp,
  };
}

/** The earlier answer for the claim's idempotency key, if a concurrent duplicate won. */
async function replayIfKnown(kv: Deno.Kv, claim: PreparedClaim): Promise<ClaimOutcome | null> {
  if (!claim.idemKey) return null;
  const entry = await kv.get<IdempotencyRecord>(claim.idemKey);
  return entry.versionstamp === null ? null : replay(entry, claim.bodyHash);
}

/** The first answer of an idempotent claim, or 422 when the retry's body differs. */
export function replay(entry: Deno.KvEntry<IdempotencyRecord>, bodyHash: string): ClaimOutcome {
  if (!digestsEqual(entry.value.bodyHash, bodyHash)) {
    throw new ValidationError(
      "This Idempotency-Key was already used with a different request body",
      [{ field: "Idempotency-Key", message: "reused with a different body" }],
    );
  }
  // The idempotency record was written in the claim's own commit (or says which it was).
  const { grant, commitIndex } = entry.value;
  return {
    grant: withTokens(grant, grantVersionstamp(entry), commitIndex),
    replayed: true,
    groupSize: 0,
  };
}

/**
 * Up to `want` free entries matching `labels`, read from a random point of the index, of
 * at most `scanLimit` read (all of them by default: labels few free slots match may take
 * the whole index to find, or to find none).
 */
export async function findFreeSlots(
  kv: Deno.Kv,
  region: string,
  labels: ClaimInput["labels"],
  want: number,
  scanLimit = Infinity,
): Promise<Deno.KvEntry<FreeSlot>[]> {
  return (await scanFreeSlots(kv, region, labels, want, scanLimit)).found;
}

/** findFreeSlots, and whether it read the whole index (so a longer search would find no more). */
async function scanFreeSlots(
  kv: Deno.Kv,
  region: string,
  labels: ClaimInput["labels"],
  want: number,
  scanLimit: number,
): Promise<{ found: Deno.KvEntry<FreeSlot>[]; whole: boolean }> {
  const prefix = keys.freeIndex(region);
  const from = keys.freeFrom(region, Math.floor(Math.random() * 2 ** 32));
  const found: Deno.KvEntry<FreeSlot>[] = [];
  let scanned = 0;
  for (const selector of [{ prefix, start: from }, { prefix, end: from }]) {
    const batchSize = Math.min(labels ? 100 : want, 100, scanLimit);
    for await (const entry of kv.list<FreeSlot>(selector, { batchSize })) {
      if (labelsMatch(entry.value.labels, labels)) found.push(entry);
      if (found.length >= want || ++scanned >= scanLimit) return { found, whole: false };
    }
  }
  return { found, whole: true };
}

/** Seconds until the region's soonest lease expiry, as a Retry-After hint (1..60). */
async function secondsUntilNextExpiry(kv: Deno.Kv, clock: Clock, region: string): Promise<number> {
  const expiresAt = await soonestLeaseExpiry(kv, region);
  return expiresAt === null ? 5 : secondsUntil(clock, expiresAt);
}

/** Whole seconds until `at`, as a Retry-After hint (1..60). */
function secondsUntil(clock: Clock, at: number): number {
  return Math.min(60, Math.max(1, Math.ceil((at - clock.now()) / 1000)));
}

/** JSON with sorted object keys, so equal bodies hash equally. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(
    value,
    (_key, v) =>
      v && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1)))
        : v,
  );
}
