/** Claims: compare-and-swap allocation, renewal, release, revocation, listing. */
import { encodeBase64Url } from "./base64.ts";
import { ulid } from "ulid";
import { digestsEqual, sha256Hex } from "./auth.ts";
import type { Clock } from "./clock.ts";
import {
  ForbiddenError,
  LeaseLostError,
  NoCapacityError,
  UnavailableError,
  ValidationError,
} from "./errors.ts";
import { keys } from "./keys.ts";
import { addCounter, markWrite } from "./kv.ts";
import {
  type ClaimRecord,
  claimView,
  describeClaim,
  endLease,
  expireIfDue,
  fencingTokenOf,
  getClaimEntry,
  sweepExpired,
} from "./leases.ts";
import { type FreeSlot, type HeldSlot, labelsMatch, type ResourceSpec } from "./pool.ts";
import type { LeaseExpireMessage } from "./queue.ts";
import { type ClaimRoute, routeClaim } from "./fallback.ts";
import { getRegionConfig } from "./regions.ts";
import type { Claim, ClaimGrant, ClaimInput, ClaimState, RegionConfig } from "./schemas.ts";

/** Conflicting commits a claim survives before answering 503 (each retry reads afresh). */
const MAX_CLAIM_ATTEMPTS = 32;
/** Free entries read per attempt; the claim picks one at random so racers spread out. */
const CANDIDATES_PER_ATTEMPT = 8;
/** Idempotency keys outlive the lease they produced by this much. */
const IDEMPOTENCY_GRACE_MS = 24 * 3600 * 1000;

/** What an idempotency key remembers: the request's digest and the first answer. */
interface IdempotencyRecord {
  bodyHash: string;
  grant: Omit<ClaimGrant, "fencingToken" | "consistencyToken">;
}

/** A claim request, as the route hands it over. */
export interface ClaimRequest {
  region: string;
  caller: string;
  input: ClaimInput;
  idempotencyKey?: string;
}

/** A granted claim; `replayed` when an idempotency key returned an earlier answer. */
export interface ClaimOutcome {
  grant: ClaimGrant;
  replayed: boolean;
}

/**
 * Claims one free slot in `region`. Reads candidates from a random point of the
 * free index and commits with checks on exactly what it read, so a stale read costs
 * a retry and never a double allocation. 503 when nothing matching is free.
 */
export async function createClaim(
  kv: Deno.Kv,
  clock: Clock,
  request: ClaimRequest,
): Promise<ClaimOutcome> {
  const { region, input } = request;
  const bodyHash = await sha256Hex(canonicalJson(input));
  const idemKey = request.idempotencyKey === undefined
    ? null
    : keys.idempotency(region, request.caller, request.idempotencyKey);
  if (idemKey) {
    const earlier = await kv.get<IdempotencyRecord>(idemKey);
    if (earlier.versionstamp !== null) return replay(earlier, bodyHash);
  }
  const route = await routeClaim(kv, clock, region);
  const pools = route.servedBy === region ? [region] : [route.servedBy, region];
  for (const [i, servedBy] of pools.entries()) {
    try {
      return await claimFrom(kv, clock, request, route, servedBy, bodyHash, idemKey);
    } catch (error) {
      // A backup that ran out between routing and claiming: the region's own pool serves.
      if (!(error instanceof NoCapacityError) || i === pools.length - 1) throw error;
    }
  }
  throw new Error("unreachable");
}

async function claimFrom(
  kv: Deno.Kv,
  clock: Clock,
  request: ClaimRequest,
  route: ClaimRoute,
  servedBy: string,
  bodyHash: string,
  idemKey: Deno.KvKey | null,
): Promise<ClaimOutcome> {
  const { region, input } = request;
  const { config } = route;
  const leaseMs = Math.min(input.leaseMs ?? config.lease.defaultMs, config.lease.maxMs);
  let swept = false;
  for (let attempt = 0; attempt < MAX_CLAIM_ATTEMPTS; attempt++) {
    const candidates = await findFreeSlots(kv, servedBy, input.labels, CANDIDATES_PER_ATTEMPT);
    if (candidates.length === 0) {
      if (!swept) {
        swept = true;
        if (await sweepExpired(kv, clock, servedBy) > 0) continue;
      }
      throw new NoCapacityError(
        `Cannot claim in region "${region}": no ready resource${
          input.labels ? " matching the requested labels" : ""
        } has a free slot${servedBy === region ? "" : ` in backup "${servedBy}"`}`,
        await secondsUntilNextExpiry(kv, clock, servedBy),
      );
    }
    const pick = candidates[Math.floor(Math.random() * candidates.length)];
    const [resource, slot] = pick.key.slice(-2) as [string, number];
    const now = clock.now();
    const secret = encodeBase64Url(crypto.getRandomValues(new Uint8Array(32)));
    const record: ClaimRecord = {
      id: `${servedBy}.${ulid()}`,
      region,
      servedBy,
      resource,
      slot,
      holder: input.holder,
      caller: request.caller,
      state: "active",
      secretHash: await sha256Hex(secret),
      leaseMs,
      createdAt: now,
      expiresAt: now + leaseMs,
      endedAt: null,
      reason: null,
      commitIndex: 0,
      fencingToken: null,
    };
    const slotKey = keys.slot(servedBy, resource, slot);
    const op = kv.atomic()
      .check(pick)
      .check({ key: slotKey, versionstamp: null })
      .set(slotKey, { claimId: record.id } satisfies HeldSlot)
      .delete(pick.key)
      .set(keys.claim(servedBy, record.id), record)
      .set(keys.lease(servedBy, record.expiresAt, record.id), null)
      .enqueue(expiryMessage(record), { delay: leaseMs });
    addCounter(op, servedBy, "free", -1);
    addCounter(op, servedBy, "held", 1);
    markWrite(op, servedBy, region);
    const grant: IdempotencyRecord["grant"] = {
      ...describeClaim(record),
      secret,
      mode: route.mode,
      lagMs: servedBy === route.servedBy ? route.lagMs : 0,
      note: servedBy === route.servedBy
        ? route.note
        : `backup "${route.servedBy}" ran out; served here`,
    };
    if (idemKey) {
      op.check({ key: idemKey, versionstamp: null });
      op.set(idemKey, { bodyHash, grant } satisfies IdempotencyRecord, {
        expireIn: leaseMs + IDEMPOTENCY_GRACE_MS,
      });
    }
    const res = await op.commit();
    if (res.ok) {
      return { grant: withTokens(grant, res.versionstamp), replayed: false };
    }
    if (idemKey) {
      const raced = await kv.get<IdempotencyRecord>(idemKey);
      if (raced.versionstamp !== null) return replay(raced, bodyHash);
    }
  }
  throw new UnavailableError(
    `Cannot claim in region "${region}": too much contention, retry shortly`,
  );
}

function withTokens(
  grant: IdempotencyRecord["grant"],
  versionstamp: string,
): ClaimGrant {
  return { ...grant, fencingToken: `${versionstamp}0000`, consistencyToken: versionstamp };
}

function replay(entry: Deno.KvEntry<IdempotencyRecord>, bodyHash: string): ClaimOutcome {
  if (!digestsEqual(entry.value.bodyHash, bodyHash)) {
    throw new ValidationError(
      "This Idempotency-Key was already used with a different request body",
      [{ field: "Idempotency-Key", message: "reused with a different body" }],
    );
  }
  // The idempotency record was written in the claim's own commit: same versionstamp.
  return { grant: withTokens(entry.value.grant, entry.versionstamp), replayed: true };
}

/** Up to `want` free entries matching `labels`, read from a random point of the index. */
async function findFreeSlots(
  kv: Deno.Kv,
  region: string,
  labels: ClaimInput["labels"],
  want: number,
): Promise<Deno.KvEntry<FreeSlot>[]> {
  const prefix = keys.freeIndex(region);
  const from = keys.freeFrom(region, Math.floor(Math.random() * 2 ** 32));
  const found: Deno.KvEntry<FreeSlot>[] = [];
  for (const selector of [{ prefix, start: from }, { prefix, end: from }]) {
    const batchSize = labels ? 100 : want;
    for await (const entry of kv.list<FreeSlot>(selector, { batchSize })) {
      if (!labelsMatch(entry.value.labels, labels)) continue;
      found.push(entry);
      if (found.length >= want) return found;
    }
  }
  return found;
}

/** Seconds until the region's soonest lease expiry, as a Retry-After hint (1..60). */
async function secondsUntilNextExpiry(kv: Deno.Kv, clock: Clock, region: string): Promise<number> {
  for await (const entry of kv.list({ prefix: keys.leases(region) }, { limit: 1 })) {
    const expiresAt = entry.key.at(-2) as number;
    return Math.min(60, Math.max(1, Math.ceil((expiresAt - clock.now()) / 1000)));
  }
  return 5;
}

function expiryMessage(record: ClaimRecord): LeaseExpireMessage {
  return { type: "lease.expire", claimId: record.id, expiresAt: record.expiresAt };
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

/** Checks a caller may touch a claim (its region scope), before anything is revealed or changed. */
export type ClaimAccess = (record: ClaimRecord) => void;

async function secretGuard(
  secret: string | undefined,
  access: ClaimAccess,
): Promise<(record: ClaimRecord) => void> {
  const presented = secret ? await sha256Hex(secret) : null;
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
  if (record.state === "active" && record.expiresAt <= clock.now()) {
    await expireIfDue(kv, clock, record.id);
    throw new LeaseLostError(`Claim "${record.id}" is no longer active: its lease expired`);
  }
}

/** Extends a live lease (capped by the region's lease.maxMs). 403 on a bad secret, 409 if lost. */
export async function renewClaim(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  request: { secret: string | undefined; leaseMs?: number; access: ClaimAccess },
): Promise<{ claim: Claim; consistencyToken: string }> {
  const guard = await secretGuard(request.secret, request.access);
  const leaseMs = request.leaseMs;
  for (let attempt = 0; attempt < 10; attempt++) {
    const entry = await getClaimEntry(kv, claimId);
    const record = entry.value;
    guard(record);
    if (record.state !== "active") {
      throw new LeaseLostError(`Claim "${claimId}" is no longer active: it was ${record.state}`);
    }
    await refuseIfExpired(kv, clock, record);
    const [config, spec] = await kv.getMany<[RegionConfig, ResourceSpec]>([
      keys.regionConfig(record.region),
      keys.resource(record.servedBy, record.resource),
    ]);
    if (spec.value === null || spec.value.state === "gone") {
      await endLease(kv, clock, claimId, { state: "lost", reason: "resource gone" })
        .catch((error) => {
          if (!(error instanceof LeaseLostError)) throw error;
        });
      throw new LeaseLostError(`Claim "${claimId}" is no longer active: its resource is gone`);
    }
    const maxMs = config.value?.lease.maxMs ?? record.leaseMs;
    const nextLeaseMs = Math.min(leaseMs ?? record.leaseMs, maxMs);
    const now = clock.now();
    const renewed: ClaimRecord = {
      ...record,
      leaseMs: nextLeaseMs,
      expiresAt: now + nextLeaseMs,
      fencingToken: fencingTokenOf(entry),
    };
    const op = kv.atomic()
      .check(entry)
      .set(entry.key, renewed)
      .delete(keys.lease(record.servedBy, record.expiresAt, claimId))
      .set(keys.lease(record.servedBy, renewed.expiresAt, claimId), null)
      .enqueue(expiryMessage(renewed), { delay: nextLeaseMs });
    markWrite(op, record.servedBy);
    const res = await op.commit();
    if (res.ok) {
      const view = claimView({ key: entry.key, value: renewed, versionstamp: res.versionstamp });
      return { claim: view, consistencyToken: res.versionstamp };
    }
  }
  throw new UnavailableError(`Cannot renew claim "${claimId}": too many concurrent changes`);
}

/** Releases a live lease, freeing its slot. 403 on a bad secret, 409 if already lost. */
export async function releaseClaim(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  request: { secret: string | undefined; access: ClaimAccess },
): Promise<{ consistencyToken: string }> {
  const guard = await secretGuard(request.secret, request.access);
  const entry = await getClaimEntry(kv, claimId);
  guard(entry.value);
  await refuseIfExpired(kv, clock, entry.value);
  const { consistencyToken } = await endLease(kv, clock, claimId, {
    state: "released",
    reason: null,
    guard: (record) => {
      guard(record);
      if (record.state === "active" && record.expiresAt <= clock.now()) {
        throw new LeaseLostError(`Claim "${claimId}" is no longer active: its lease expired`);
      }
    },
  });
  return { consistencyToken };
}

/** Ends a live lease now on an operator's word; the claim keeps the reason. */
export async function revokeClaim(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  request: { reason: string; access: ClaimAccess },
): Promise<{ claim: Claim; consistencyToken: string }> {
  const { entry, consistencyToken } = await endLease(kv, clock, claimId, {
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
  cursor?: string;
  limit: number;
}

/**
 * A page of the region's claims (those served by its pool), newest id last. Filtering
 * happens while scanning, so a page may hold fewer than `limit` items and still have a cursor.
 */
export async function listClaims(
  kv: Deno.Kv,
  region: string,
  query: ClaimQuery,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<{ items: Claim[]; cursor: string | null }> {
  await getRegionConfig(kv, region, consistency);
  const scanBudget = query.limit * 10;
  const iter = kv.list<ClaimRecord>({ prefix: keys.claims(region) }, {
    cursor: query.cursor,
    limit: scanBudget,
    consistency,
  });
  const items: Claim[] = [];
  let scanned = 0;
  let cursor: string | null = null;
  for await (const entry of iter) {
    scanned++;
    const record = entry.value;
    if (
      (query.holder === undefined || record.holder === query.holder) &&
      (query.state === undefined || record.state === query.state)
    ) {
      items.push(claimView(entry));
      if (items.length >= query.limit) {
        cursor = iter.cursor;
        break;
      }
    }
  }
  if (cursor === null && scanned >= scanBudget) cursor = iter.cursor;
  return { items, cursor: cursor || null };
}
