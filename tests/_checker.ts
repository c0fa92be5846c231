/**
 * An independent checker for recorded allocation histories (SPEC invariants 1 and 2).
 *
 * A history is what callers *observed*: every acknowledged grant, renew and release,
 * every observation that a lease had ended (a 409, a read showing it ended, an
 * acknowledged revoke), each stamped with the instants the operation was invoked and
 * acknowledged. It knows nothing about allot's keys or code, so a bug there cannot
 * hide a violation here.
 *
 * An instant is (time in ms, sequence number): `time` is the clock when the instant was
 * taken (fake in unit tests; in chaos runs the real one, which the server shares), `seq` a
 * counter that increases with every instant taken, so instants are totally ordered in
 * real time. Use {@link HistoryRecorder} to take them.
 *
 * The checker is conservative: it only reports what the history proves. A lease is
 * certainly live from its grant's acknowledgement until the earliest of: the
 * invocation of its acknowledged release, its expiry time (the last acknowledged
 * `leaseExpiresAt`), or the invocation of any operation that observed it ended. So
 *
 * - two leases on one (region, resource, slot) whose certain-live intervals overlap are
 *   a double allocation;
 * - a grant acknowledged before another grant on the same resource was invoked must
 *   carry a smaller fencing token (fixed-width hex strings, compared as strings), and
 *   no two claims on a resource may share a token;
 * - a renew or release acknowledged as successful although it was invoked at or after
 *   the lease's expiry time, or after its end had been observed, resurrected a dead lease.
 *
 * Contract for the recorder: every way a lease can end early (revoke, resource gone or
 * deleted) must appear as an `ended` event (from anyone, at any time), every renew or
 * release left unanswered as an `uncertain` one, and the renews and releases of one claim
 * must not overlap in time (its holder acts sequentially).
 */

/** A point in a history: clock time, then the order in which instants were taken. */
export interface Instant {
  time: number;
  seq: number;
}

interface Timed {
  claimId: string;
  invoked: Instant;
  acked: Instant;
}

/** An acknowledged grant (201). `expiresAt` is the answer's `leaseExpiresAt` in ms. */
export interface GrantEvent extends Timed {
  kind: "grant";
  region: string;
  resource: string;
  slot: number;
  fencingToken: string;
  expiresAt: number;
}

/** The grant event of a 201 claim answer (a ClaimGrant body), timed by the caller. */
export function grantEvent(
  grant: {
    id: string;
    servedBy: string;
    resource: string;
    slot: number;
    fencingToken: string;
    leaseExpiresAt: string;
  },
  invoked: Instant,
  acked: Instant,
): GrantEvent {
  return {
    kind: "grant",
    claimId: grant.id,
    region: grant.servedBy,
    resource: grant.resource,
    slot: grant.slot,
    fencingToken: grant.fencingToken,
    expiresAt: isoMs(grant.leaseExpiresAt),
    invoked,
    acked,
  };
}

/** An acknowledged renew (200); `expiresAt` is the new `leaseExpiresAt` in ms. */
export interface RenewEvent extends Timed {
  kind: "renew";
  expiresAt: number;
  fencingToken?: string;
}

/** An acknowledged release (204). */
export interface ReleaseEvent extends Timed {
  kind: "release";
}

/**
 * Evidence that the lease had ended by `acked`: a 409 on renew/release, a read that
 * showed it expired/lost/released, or an acknowledged revoke (or resource removal).
 */
export interface EndedEvent extends Timed {
  kind: "ended";
  why?: string;
}

/**
 * A renew or release whose answer never came (the server crashed, the connection broke).
 * It may have committed, so from `invoked` on the lease may have ended (a release) or its
 * expiry may have moved, even earlier (a renew): the lease is no longer certainly live.
 * `acked` is when the failure was seen. After an uncertain renew the holder must not renew
 * or release the claim again (its expiry is unknown); after an uncertain release it may
 * retry the release.
 */
export interface UncertainEvent extends Timed {
  kind: "uncertain";
}

export type HistoryEvent = GrantEvent | RenewEvent | ReleaseEvent | EndedEvent | UncertainEvent;

/** One proven violation, with a human-readable explanation. */
export interface Violation {
  kind: "double-allocation" | "fencing-order" | "acknowledged-dead-lease" | "malformed-history";
  message: string;
  claimIds: string[];
}

/** Lexicographic order of instants. */
export function compareInstants(a: Instant, b: Instant): number {
  return a.time - b.time || a.seq - b.seq;
}

const before = (a: Instant, b: Instant) => compareInstants(a, b) < 0;
const minInstant = (a: Instant, b: Instant) => (before(b, a) ? b : a);
/** The first instant at which a lease expiring at `expiresAt` is dead (`expiresAt <= now`). */
const expiryInstant = (expiresAt: number): Instant => ({ time: expiresAt, seq: -Infinity });
const fmt = (i: Instant) => (Number.isFinite(i.seq) ? `t=${i.time}#${i.seq}` : `t=${i.time}`);

/** Takes instants from a clock; share one recorder among all callers of a history. */
export class HistoryRecorder {
  readonly events: HistoryEvent[] = [];
  #seq = 0;

  constructor(private readonly clock: { now(): number }) {}

  /** The current instant; call it right before invoking and right after the answer. */
  now(): Instant {
    return { time: this.clock.now(), seq: this.#seq++ };
  }

  record(event: HistoryEvent): void {
    this.events.push(event);
  }
}

interface Lease {
  grant: GrantEvent;
  /** Certainly live over [start, end). */
  start: Instant;
  end: Instant;
}

/** Checks a history; an empty array means it proves no violation. */
export function checkHistory(events: readonly HistoryEvent[]): Violation[] {
  const violations: Violation[] = [];
  const grants = new Map<string, GrantEvent>();
  const later = new Map<string, Exclude<HistoryEvent, GrantEvent>[]>();
  for (const event of events) {
    if (event.kind === "grant") {
      if (grants.has(event.claimId)) {
        violations.push({
          kind: "malformed-history",
          message: `claim ${event.claimId} was granted twice`,
          claimIds: [event.claimId],
        });
        continue;
      }
      grants.set(event.claimId, event);
    } else {
      const list = later.get(event.claimId) ?? [];
      list.push(event);
      later.set(event.claimId, list);
    }
  }

  const leases: Lease[] = [];
  for (const grant of grants.values()) {
    const ops = (later.get(grant.claimId) ?? []).slice().sort((a, b) =>
      compareInstants(a.invoked, b.invoked)
    );
    leases.push({ grant, start: grant.acked, end: leaseEnd(grant, ops, violations) });
  }
  for (const claimId of later.keys()) {
    if (!grants.has(claimId)) {
      violations.push({
        kind: "malformed-history",
        message: `claim ${claimId} has events but no acknowledged grant`,
        claimIds: [claimId],
      });
    }
  }

  checkOverlaps(leases, violations);
  checkFencing([...grants.values()], violations);
  return violations;
}

/**
 * Where a lease stops being certainly live, walking its operations in order; reports
 * renews and releases acknowledged although the lease had provably ended.
 */
function leaseEnd(
  grant: GrantEvent,
  ops: Exclude<HistoryEvent, GrantEvent>[],
  violations: Violation[],
): Instant {
  const never: Instant = { time: Infinity, seq: Infinity };
  let end = never;
  /** By this instant the lease had certainly ended (an observation was acknowledged). */
  let endedBy: Instant | null = null;
  for (const op of ops) {
    if (op.kind === "uncertain") end = minInstant(end, op.invoked);
    if (op.kind !== "ended") continue;
    end = minInstant(end, op.invoked);
    endedBy = endedBy === null ? op.acked : minInstant(endedBy, op.acked);
  }
  let cursor = grant.acked;
  let expiresAt = grant.expiresAt;
  let expired: Instant | null = null;
  /** Records the first instant in [from, to) at which the expiry bound is reached. */
  const live = (from: Instant, to: Instant, bound: number) => {
    if (expired) return;
    const at = expiryInstant(bound);
    if (!before(from, at)) expired = from;
    else if (before(at, to)) expired = at;
  };
  for (const op of ops) {
    if (op.kind === "ended" || op.kind === "uncertain") continue;
    if (before(op.invoked, cursor)) {
      violations.push({
        kind: "malformed-history",
        message: `operations on claim ${grant.claimId} overlap in time (at ${fmt(op.invoked)})`,
        claimIds: [grant.claimId],
      });
    }
    live(cursor, op.invoked, expiresAt);
    // The server sees a clock at least op.invoked.time, and the last acknowledged expiry
    // is the lease's expiry then: if that has passed, or an end was already observed,
    // the lease was dead and this answer resurrected it.
    const deadSince = !before(op.invoked, expiryInstant(expiresAt))
      ? expiryInstant(expiresAt)
      : endedBy !== null && before(endedBy, op.invoked)
      ? endedBy
      : null;
    if (deadSince !== null) {
      violations.push({
        kind: "acknowledged-dead-lease",
        message: `${op.kind} of claim ${grant.claimId} invoked at ${
          fmt(op.invoked)
        } was acknowledged, but the lease had ended by ${fmt(deadSince)}`,
        claimIds: [grant.claimId],
      });
    }
    if (op.kind === "release") {
      end = minInstant(end, op.invoked);
      endedBy = endedBy === null ? op.acked : minInstant(endedBy, op.acked);
    } else {
      if (op.fencingToken !== undefined && op.fencingToken !== grant.fencingToken) {
        violations.push({
          kind: "fencing-order",
          message: `renew of claim ${grant.claimId} answered fencing token ${op.fencingToken}, ` +
            `but it was granted with ${grant.fencingToken}`,
          claimIds: [grant.claimId],
        });
      }
      // While the renew is in flight either expiry may apply.
      live(op.invoked, op.acked, Math.min(expiresAt, op.expiresAt));
      expiresAt = op.expiresAt;
    }
    cursor = op.acked;
  }
  live(cursor, never, expiresAt);
  return expired === null ? end : minInstant(end, expired);
}

function checkOverlaps(leases: Lease[], violations: Violation[]): void {
  const bySlot = new Map<string, Lease[]>();
  for (const lease of leases) {
    if (!before(lease.start, lease.end)) continue;
    const { region, resource, slot } = lease.grant;
    const key = JSON.stringify([region, resource, slot]);
    const list = bySlot.get(key) ?? [];
    list.push(lease);
    bySlot.set(key, list);
  }
  for (const [key, list] of bySlot) {
    list.sort((a, b) => compareInstants(a.start, b.start));
    let open = list[0];
    for (const lease of list.slice(1)) {
      if (before(lease.start, open.end)) {
        violations.push({
          kind: "double-allocation",
          message: `slot ${key} held by claim ${open.grant.claimId} (live ${fmt(open.start)}..${
            fmt(open.end)
          }) and claim ${lease.grant.claimId} (live from ${fmt(lease.start)})`,
          claimIds: [open.grant.claimId, lease.grant.claimId],
        });
      }
      if (before(open.end, lease.end)) open = lease;
    }
  }
}

function checkFencing(grants: GrantEvent[], violations: Violation[]): void {
  const byResource = new Map<string, GrantEvent[]>();
  for (const grant of grants) {
    const key = JSON.stringify([grant.region, grant.resource]);
    const list = byResource.get(key) ?? [];
    list.push(grant);
    byResource.set(key, list);
  }
  for (const [key, list] of byResource) {
    const width = list[0].fencingToken.length;
    const seen = new Map<string, string>();
    for (const grant of list) {
      if (grant.fencingToken.length !== width) {
        violations.push({
          kind: "fencing-order",
          message: `resource ${key}: fencing tokens of different widths (${grant.fencingToken})`,
          claimIds: [grant.claimId],
        });
      }
      const other = seen.get(grant.fencingToken);
      if (other !== undefined) {
        violations.push({
          kind: "fencing-order",
          message:
            `resource ${key}: claims ${other} and ${grant.claimId} share fencing token ${grant.fencingToken}`,
          claimIds: [other, grant.claimId],
        });
      }
      seen.set(grant.fencingToken, grant.claimId);
    }
    // For each grant, the largest token among grants acknowledged before it was invoked.
    const byAck = list.slice().sort((a, b) => compareInstants(a.acked, b.acked));
    const byInvoke = list.slice().sort((a, b) => compareInstants(a.invoked, b.invoked));
    let i = 0;
    let max: GrantEvent | null = null;
    for (const grant of byInvoke) {
      while (i < byAck.length && before(byAck[i].acked, grant.invoked)) {
        if (max === null || byAck[i].fencingToken > max.fencingToken) max = byAck[i];
        i++;
      }
      if (max !== null && !(max.fencingToken < grant.fencingToken)) {
        violations.push({
          kind: "fencing-order",
          message: `resource ${key}: claim ${grant.claimId} (invoked ${
            fmt(grant.invoked)
          }) got fencing token ${grant.fencingToken}, not above ${max.fencingToken} of claim ${max.claimId} acknowledged at ${
            fmt(max.acked)
          }`,
          claimIds: [max.claimId, grant.claimId],
        });
      }
    }
  }
}

/** Parses an ISO timestamp from an answer into ms. */
export function isoMs(iso: string): number {
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) throw new Error(`not a timestamp: ${iso}`);
  return ms;
}
