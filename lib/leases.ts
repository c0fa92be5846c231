/** Claim records and the one way a lease ends (release, expiry, loss, revocation). */
import type { AtomicWriter } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { LeaseLostError, NotFoundError, UnavailableError } from "./errors.ts";
import { keys } from "./keys.ts";
import { CommitEffects } from "./kv.ts";
import { type FreeSlot, type HeldSlot, isClaimable, type ResourceSpec } from "./pool.ts";
import type { Claim, ClaimState } from "./schemas.ts";

/**
 * The longest lease granted, whatever a region allows (its limits may be any positive
 * integers): keeps every expiry a valid date, and far from Number's precision limit.
 */
export const LEASE_CEILING_MS = 10 * 365 * 24 * 3600 * 1000;

/** The lease a claim or renew gets: what it asked for, else `usual`, clamped to `maxMs`. */
export function grantedLeaseMs(asked: number | undefined, usual: number, maxMs: number): number {
  return Math.min(asked ?? usual, maxMs, LEASE_CEILING_MS);
}

/** How long an ended claim stays readable (the SPEC asks for at least one hour). */
export const ENDED_CLAIM_RETENTION_MS = 2 * 3600 * 1000;

/** A claim as stored under its serving region's prefix. */
export interface ClaimRecord {
  id: string;
  /** The region asked for. */
  region: string;
  /** The region whose pool the slot belongs to (differs in fallback). */
  servedBy: string;
  resource: string;
  slot: number;
  holder: string;
  /** Principal id of the caller, for idempotency scoping and audits. */
  caller: string;
  state: ClaimState;
  secretHash: string;
  leaseMs: number;
  createdAt: number;
  expiresAt: number;
  endedAt: number | null;
  reason: string | null;
  /** Position of this claim in its commit, the fencing token's low digits. */
  commitIndex: number;
  /** Filled in on the first rewrite; until then the entry's own versionstamp is the token. */
  fencingToken: string | null;
  /**
   * The claim's Idempotency-Key and when its record expires (clock ms), so a renew that
   * carries the lease near that moment writes the key again (idempotency.ts). Absent
   * without a key.
   */
  idempotency?: { key: string; expiresAt: number };
}

/** The fencing token: the claim commit's versionstamp plus the claim's index in that commit. */
export function fencingTokenOf(entry: Deno.KvEntry<ClaimRecord>): string {
  return entry.value.fencingToken ??
    entry.versionstamp + entry.value.commitIndex.toString(16).padStart(4, "0");
}

/** The reason an expired claim gives. */
export const EXPIRED_REASON = "lease expired";

/**
 * A claim record as of `now`: a lease past its expiry reads `expired`, ended at its expiry,
 * also before the sweep (or a renew or release) has recorded it, so no reader is told it
 * still holds a slot it has lost.
 */
export function recordAsOf(record: ClaimRecord, now: number): ClaimRecord {
  return isPastExpiry(record, now)
    ? { ...record, state: "expired", endedAt: endOfExpired(record), reason: EXPIRED_REASON }
    : record;
}

/**
 * When an expired lease ended: at its expiry, but never before the claim began (a renew by a
 * server whose clock is behind the granting one's can date the expiry earlier).
 */
function endOfExpired(record: ClaimRecord): number {
  return Math.max(record.expiresAt, record.createdAt);
}

/** Whether a lease still active by its record has run out (its expiry not yet recorded). */
export function isPastExpiry(record: ClaimRecord, now: number): boolean {
  return record.state === "active" && record.expiresAt <= now;
}

/** Records the expiry of a lease that has run out, then refuses the call with 409. */
export async function refuseExpired(kv: Deno.Kv, clock: Clock, claimId: string): Promise<never> {
  await expireIfDue(kv, clock, claimId);
  throw new LeaseLostError(`Claim "${claimId}" is no longer active: its lease expired`);
}

/** The public view of a claim, as of `now` when given (see recordAsOf): never its secret. */
export function claimView(entry: Deno.KvEntry<ClaimRecord>, now?: number): Claim {
  const record = now === undefined ? entry.value : recordAsOf(entry.value, now);
  return { ...describeClaim(record), fencingToken: fencingTokenOf(entry) };
}

/** The public view of a claim record, before its commit has given it a fencing token. */
export function describeClaim(r: ClaimRecord): Omit<Claim, "fencingToken"> {
  return {
    id: r.id,
    region: r.region,
    servedBy: r.servedBy,
    resource: r.resource,
    slot: r.slot,
    holder: r.holder,
    state: r.state,
    leaseMs: r.leaseMs,
    createdAt: new Date(r.createdAt).toISOString(),
    leaseExpiresAt: new Date(r.expiresAt).toISOString(),
    endedAt: r.endedAt === null ? null : new Date(r.endedAt).toISOString(),
    reason: r.reason,
  };
}

/** Claim ids carry their serving region (`fra.01J...`) so a read needs no lookup. */
export function claimIdRegion(claimId: string): string | null {
  const match = claimId.match(/^([a-z0-9][a-z0-9-]{0,31})\.[0-9A-HJKMNP-TV-Z]{26}$/);
  return match ? match[1] : null;
}

/** The key of the claim an id names, or null when the id cannot name one. */
export function claimKeyOf(claimId: string): Deno.KvKey | null {
  const region = claimIdRegion(claimId);
  return region === null ? null : keys.claim(region, claimId);
}

/** The 404 for an id that names no stored claim. */
export function claimNotFound(claimId: string): NotFoundError {
  return new NotFoundError(`Claim "${claimId}" does not exist`);
}

/** Reads a claim by id, or 404. */
export async function getClaimEntry(
  kv: Deno.Kv,
  claimId: string,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<Deno.KvEntry<ClaimRecord>> {
  const key = claimKeyOf(claimId);
  const entry = key === null ? null : await kv.get<ClaimRecord>(key, { consistency });
  if (!entry || entry.versionstamp === null) throw claimNotFound(claimId);
  return entry;
}

/**
 * A claim's state now (a run-out lease reads `expired`); `ended` once its record is gone, as
 * only an ended claim's record expires (ENDED_CLAIM_RETENTION_MS), while its Idempotency-Key
 * is kept until 24 h after its lease's expiry.
 */
export async function claimStateNow(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
): Promise<ClaimState | "ended"> {
  const key = claimKeyOf(claimId);
  const entry = key === null ? null : await kv.get<ClaimRecord>(key);
  return entry?.value ? recordAsOf(entry.value, clock.now()).state : "ended";
}

/** Why a live lease is ending. */
export interface LeaseEnd {
  state: Exclude<ClaimState, "active">;
  reason: string | null;
  /** Re-checked on every attempt against the fresh record; throw to refuse. */
  guard?: (record: ClaimRecord) => void;
}

/** What ending a lease reads and checks: the claim, its resource's spec, its slot. */
export interface LeaseEndRead {
  claim: Deno.KvEntry<ClaimRecord>;
  spec: Deno.KvEntryMaybe<ResourceSpec>;
  slot: Deno.KvEntryMaybe<HeldSlot>;
}

/** Where a lease is held: fixed for the claim's whole life. */
export type LeasePlace = Pick<ClaimRecord, "servedBy" | "resource" | "slot">;

/** Most lease places remembered; past it the oldest are forgotten (their ends read twice). */
const MAX_LEASE_PLACES = 50_000;

/**
 * Where this isolate's recent grants are held, so ending one reads its claim, spec and
 * slot in one round trip instead of reading the claim first. Only a hint: the claim
 * record read with them is what the end is checked against.
 */
export class LeasePlaces {
  #places = new Map<string, LeasePlace>();

  /** Remembers a grant's place. */
  remember(claimId: string, place: LeasePlace): void {
    if (this.#places.size >= MAX_LEASE_PLACES) {
      this.#places.delete(this.#places.keys().next().value!);
    }
    this.#places.set(claimId, place);
  }

  /** A grant's place if remembered; forgets it (a lease ends once). */
  take(claimId: string): LeasePlace | undefined {
    const place = this.#places.get(claimId);
    this.#places.delete(claimId);
    return place;
  }
}

/** The spec and slot keys a claim's lease end depends on. */
export function leaseEndKeys(record: LeasePlace): [Deno.KvKey, Deno.KvKey] {
  return [
    keys.resource(record.servedBy, record.resource),
    keys.slot(record.servedBy, record.resource, record.slot),
  ];
}

/**
 * Adds a lease end to an atomic: checks on the claim, spec and slot as read; the
 * ended claim record, the held slot and expiry index removed, the free entry back
 * only if the spec allows the slot; counters and the write mark go to `effects`. Throws (guard, or 409 when the lease
 * already ended) before staging anything.
 */
export function stageLeaseEnd(
  op: AtomicWriter,
  effects: CommitEffects,
  clock: Clock,
  { claim, spec, slot }: LeaseEndRead,
  end: LeaseEnd,
): ClaimRecord {
  const record = claim.value;
  end.guard?.(record);
  if (record.state !== "active") {
    throw new LeaseLostError(`Claim "${record.id}" is no longer active: it was ${record.state}`);
  }
  const region = record.servedBy;
  const ended: ClaimRecord = {
    ...record,
    state: end.state,
    // An expiry ended the lease at its expiry, whenever the sweep records it (as reads
    // showed it: recordAsOf). A server whose clock is behind the granting one's does not
    // end a claim before it began.
    endedAt: end.state === "expired"
      ? endOfExpired(record)
      : Math.max(clock.now(), record.createdAt),
    reason: end.reason,
    fencingToken: fencingTokenOf(claim),
  };
  op.check(claim, spec, slot);
  op.set(claim.key, ended, { expireIn: ENDED_CLAIM_RETENTION_MS });
  op.delete(keys.lease(region, record.expiresAt, record.id));
  if (slot.value?.claimId === record.id) {
    op.delete(slot.key);
    effects.count(region, "held", -1);
    if (isClaimable(spec.value, record.slot)) {
      op.set(
        keys.free(region, record.resource, record.slot),
        { labels: spec.value!.labels } satisfies FreeSlot,
      );
      effects.count(region, "free", 1);
    }
  }
  effects.touch(region);
  return ended;
}

/** A lease end as committed. */
export interface LeaseEnded {
  entry: Deno.KvEntry<ClaimRecord>;
  consistencyToken: string;
}

/** Something that ends leases (the group committer, or endLease alone). */
export interface LeaseEnder {
  end(claimId: string, end: LeaseEnd): Promise<LeaseEnded>;
}

/** Ends a live lease alone, retrying on conflicts. Throws 409 if the lease already ended. */
export async function endLease(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  end: LeaseEnd,
): Promise<LeaseEnded> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const claim = await getClaimEntry(kv, claimId);
    const [spec, slot] = await kv.getMany<[ResourceSpec, HeldSlot]>(leaseEndKeys(claim.value));
    const op = kv.atomic();
    const effects = new CommitEffects();
    const ended = stageLeaseEnd(op, effects, clock, { claim, spec, slot }, end);
    effects.flush(op);
    const res = await op.commit();
    if (res.ok) {
      return {
        entry: { key: claim.key, value: ended, versionstamp: res.versionstamp },
        consistencyToken: res.versionstamp,
      };
    }
  }
  throw new UnavailableError(`Cannot end claim "${claimId}": too many concurrent changes`);
}

/**
 * Ends the lease if it is live and past its expiry; true if this call expired it.
 * Through `ender` when given (a group committer), alone otherwise.
 */
export async function expireIfDue(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  ender?: LeaseEnder,
): Promise<boolean> {
  const end: LeaseEnd = {
    state: "expired",
    reason: EXPIRED_REASON,
    guard: (record) => {
      if (record.state === "active" && record.expiresAt > clock.now()) throw new NotDue();
    },
  };
  try {
    await (ender ? ender.end(claimId, end) : endLease(kv, clock, claimId, end));
    return true;
  } catch (error) {
    if (
      error instanceof NotDue || error instanceof LeaseLostError || error instanceof NotFoundError
    ) {
      return false;
    }
    throw error;
  }
}

class NotDue extends Error {}

/** A lease found past its expiry by a call that would have ended it some other way. */
class PastExpiry extends Error {}

/**
 * Ends a live lease as `end` says (through `ender` when given), unless the lease is past
 * its expiry: then it ended by expiring, which is recorded, and the caller gets 409 as
 * for any lease that already ended. Release, revoke and a resource's removal end leases
 * this way, so none of them rewrites an expiry as something else.
 */
export async function endLiveLease(
  kv: Deno.Kv,
  clock: Clock,
  claimId: string,
  end: LeaseEnd,
  ender?: LeaseEnder,
): Promise<LeaseEnded> {
  const live: LeaseEnd = {
    ...end,
    guard: (record) => {
      end.guard?.(record);
      if (isPastExpiry(record, clock.now())) throw new PastExpiry();
    },
  };
  try {
    return ender ? await ender.end(claimId, live) : await endLease(kv, clock, claimId, live);
  } catch (error) {
    if (!(error instanceof PastExpiry)) throw error;
    return await refuseExpired(kv, clock, claimId);
  }
}

/**
 * Expires up to `limit` leases of a region whose expiry has passed: all at once through
 * `ender` (so they share commits), one by one without it. The region's sweep chain
 * (sweeper.ts) calls it; so does a claim that finds no capacity, to catch up at once.
 */
export async function sweepExpired(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  limit = 100,
  ender?: LeaseEnder,
): Promise<number> {
  const due = kv.list<null>({
    start: keys.leases(region),
    end: keys.leasesUntil(region, clock.now() + 1),
  }, { limit });
  const claimIds: string[] = [];
  for await (const entry of due) claimIds.push(entry.key.at(-1) as string);
  if (ender) {
    const done = await Promise.all(claimIds.map((id) => expireIfDue(kv, clock, id, ender)));
    return done.filter(Boolean).length;
  }
  let expired = 0;
  for (const id of claimIds) {
    if (await expireIfDue(kv, clock, id)) expired++;
  }
  return expired;
}

/** The soonest expiry among the region's live leases, or null when it holds none. */
export async function soonestLeaseExpiry(kv: Deno.Kv, region: string): Promise<number | null> {
  for await (const entry of kv.list({ prefix: keys.leases(region) }, { limit: 1 })) {
    return entry.key.at(-2) as number;
  }
  return null;
}
