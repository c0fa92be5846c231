/**
 * Group commit for claims. Claims that arrive while a commit is in flight wait for
 * it, then go out together in one atomic: one fsync for many claims. A claim that
 * arrives at an idle isolate is committed at once, so low load pays no window.
 * Nothing here is trusted for exclusivity: every claim in a group carries its own
 * checks, so a group that loses a race fails whole and its claims retry alone.
 */
import {
  allocateAlone,
  type Allocator,
  checksOf,
  type ClaimOutcome,
  commitClaims,
  findFreeSlots,
  type GrantDraft,
  LABEL_SCAN_LIMIT,
  type PreparedClaim,
  replay,
  stageClaim,
  withTokens,
} from "./allocate.ts";
import { ATOMIC_LIMITS } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { type ClaimRoute, routeClaim } from "./fallback.ts";
import { answerEach, CommitQueue, type Pending } from "./commit_queue.ts";
import type { FreeSlot } from "./pool.ts";
import type { IdempotencyRecord } from "./idempotency.ts";
import { CommitEffects, getAll } from "./kv.ts";
import { LeasePlaces } from "./leases.ts";
import { readSweeper, stageSweepers, type SweeperRead } from "./sweeper.ts";
import { instruments } from "./telemetry.ts";

/** Counters for metrics and the bench. */
export interface GroupStats {
  commits: number;
  claims: number;
  /** Claims that went to the lone path (no candidate in the group, or a failed group). */
  alone: number;
  failedGroups: number;
}

type Waiting = Pending<PreparedClaim, ClaimOutcome>;

/** Most claims in one commit: bounded by 100 checks (2-3 a claim, 1 a region) and 1,000 mutations. */
const MAX_GROUP = 48;
/** Lone claims running beside the groups past which a group waits for its own. */
const MAX_LONE_RUNNING = 256;
/** Claims waiting for a group beyond which new ones get 503 (bounded work per isolate). */
export const MAX_QUEUED_CLAIMS = 2048;

type Routes = Map<string, PromiseSettledResult<ClaimRoute>>;

/** The route of a claim that survived routing. */
function routeOf(routes: Routes, waiting: Waiting): ClaimRoute {
  const route = routes.get(waiting.job.request.region)!;
  if (route.status !== "fulfilled") throw new Error("unreachable: unrouted claims are dropped");
  return route.value;
}

const idemOf = (claim: PreparedClaim) => claim.idemKey ? JSON.stringify(claim.idemKey) : null;

/** Coalesces concurrent claims of one isolate into shared atomic commits. */
export class GroupCommitter implements Allocator {
  readonly stats: GroupStats = { commits: 0, claims: 0, alone: 0, failedGroups: 0 };
  readonly #queue: CommitQueue<PreparedClaim, ClaimOutcome>;
  #loneRunning = 0;

  constructor(
    private readonly kv: Deno.Kv,
    private readonly clock: Clock,
    private readonly places: LeasePlaces = new LeasePlaces(),
  ) {
    this.#queue = new CommitQueue({
      what: "claims",
      maxQueued: MAX_QUEUED_CLAIMS,
      // A repeated idempotency key waits a turn, so it replays instead of failing the group.
      // Each region asked for adds one check, on its serving region's sweeper.
      fits: (group, claim) =>
        group.length < MAX_GROUP &&
        group.reduce((n, c) => n + checksOf(c), checksOf(claim)) +
              new Set([...group, claim].map((c) => c.request.region)).size <=
          ATOMIC_LIMITS.checks &&
        (idemOf(claim) === null || !group.some((c) => idemOf(c) === idemOf(claim))),
      run: (group) => this.#commitGroup(group),
      alone: async (claim) => {
        this.stats.alone++;
        return await allocateAlone(
          kv,
          clock,
          claim,
          await routeClaim(kv, clock, claim.request.region),
        );
      },
    });
  }

  /** Queues a claim; resolves with its own grant or rejects with its own error. */
  allocate(claim: PreparedClaim): Promise<ClaimOutcome> {
    return this.#queue.push(claim);
  }

  async #commitGroup(everyone: Waiting[]): Promise<void> {
    // The free index is read while the route is decided, guessing that each claim is
    // served by its own region (a region in primary mode): one KV round trip less.
    const requested = (waiting: Waiting) => waiting.job.request.region;
    const guessed = Promise.all([
      this.#candidates(everyone, requested),
      this.#sweepers(everyone.map(requested)),
    ]);
    guessed.catch(() => {}); // awaited below only when the guess holds
    // A retry whose first request committed after the retry's own check (in the group
    // before) replays here: staged, its key's check would fail the whole group.
    const [routes, known] = await Promise.all([
      this.#routes(everyone),
      this.#earlierKeys(everyone),
    ]);
    const group = everyone.filter((waiting) => {
      const entry = known.get(waiting);
      if (entry) {
        try {
          waiting.resolve(replay(entry, waiting.job.bodyHash));
        } catch (error) {
          waiting.reject(error);
        }
        return false;
      }
      // A claim whose region cannot be routed (unknown region) fails alone, not the group.
      const route = routes.get(waiting.job.request.region)!;
      if (route.status === "fulfilled") return true;
      waiting.reject(route.reason);
      return false;
    });
    const servedBy = (waiting: Waiting) => routeOf(routes, waiting).servedBy;
    const [candidates, sweepers] =
      group.every((waiting) => servedBy(waiting) === requested(waiting))
        ? await guessed
        : await Promise.all([
          this.#candidates(group, servedBy),
          this.#sweepers(group.map(servedBy)),
        ]);
    const op = this.kv.atomic();
    const effects = new CommitEffects();
    const staged: Array<{ waiting: Waiting; draft: GrantDraft; index: number }> = [];
    const alone: Waiting[] = [];
    for (const waiting of group) {
      const free = candidates.get(waiting);
      if (!free) {
        alone.push(waiting);
        continue;
      }
      const route = routeOf(routes, waiting);
      const index = staged.length;
      const draft = stageClaim(
        op,
        effects,
        this.clock,
        waiting.job,
        route,
        route.servedBy,
        free,
        index,
      );
      staged.push({ waiting, draft, index });
    }
    if (staged.length > 0) {
      const leases = staged.map(({ draft }) => ({
        servedBy: draft.servedBy,
        expiresAt: this.clock.now() + draft.leaseMs,
      }));
      stageSweepers(op, this.clock, leases, (region) => sweepers.get(region)!);
      effects.flush(op);
      // A commit that threw and did not land fails the group as a conflict does; one whose
      // outcome is unknown answers each claim with its 503, not a second try elsewhere.
      const outcome = await commitClaims(this.kv, op, staged[0].draft).catch((unknown) => {
        for (const { waiting } of staged) waiting.reject(unknown);
        return null;
      });
      if (outcome?.ok) {
        const { versionstamp } = outcome;
        this.stats.commits++;
        this.stats.claims += staged.length;
        instruments.claimGroupSize.record(staged.length);
        for (const { waiting, draft, index } of staged) {
          this.places.remember(draft.id, {
            servedBy: draft.servedBy,
            resource: draft.resource,
            slot: draft.slot,
          });
          waiting.resolve({
            grant: withTokens(draft, versionstamp, index),
            replayed: false,
            groupSize: staged.length,
          });
        }
      } else {
        this.stats.failedGroups++;
        instruments.groupConflicts.add(1);
        if (outcome) alone.push(...staged.map((s) => s.waiting));
      }
    }
    // The lone path re-reads, sweeps expired leases, answers 503, or replays a raced key.
    // It can take many round trips (a full scan for labels nothing matches, a sweep), so
    // the next group does not wait for it, unless too many lone claims are running already.
    this.stats.alone += alone.length;
    this.#loneRunning += alone.length;
    const lone = answerEach(alone, async (waiting) => {
      try {
        return await allocateAlone(this.kv, this.clock, waiting.job, routeOf(routes, waiting));
      } finally {
        this.#loneRunning--;
      }
    });
    if (this.#loneRunning > MAX_LONE_RUNNING) await lone;
  }

  /** The idempotency records already stored for the group's keyed claims. */
  async #earlierKeys(
    group: Waiting[],
  ): Promise<Map<Waiting, Deno.KvEntry<IdempotencyRecord>>> {
    const keyed = group.filter((waiting) => waiting.job.idemKey !== null);
    const found = new Map<Waiting, Deno.KvEntry<IdempotencyRecord>>();
    if (keyed.length === 0) return found;
    const entries = await getAll<IdempotencyRecord>(this.kv, keyed.map((w) => w.job.idemKey!));
    keyed.forEach((waiting, i) => {
      const entry = entries[i];
      if (entry.versionstamp !== null) found.set(waiting, entry as Deno.KvEntry<IdempotencyRecord>);
    });
    return found;
  }

  /** One routing decision per region per group. */
  async #routes(group: Waiting[]): Promise<Routes> {
    const regions = [...new Set(group.map((w) => w.job.request.region))];
    const routes = await Promise.allSettled(
      regions.map((r) => routeClaim(this.kv, this.clock, r)),
    );
    return new Map(regions.map((r, i) => [r, routes[i]]));
  }

  /** Each region's expiry sweeper, read once. */
  async #sweepers(regions: string[]): Promise<Map<string, SweeperRead>> {
    const distinct = [...new Set(regions)];
    const reads = await Promise.all(distinct.map((region) => readSweeper(this.kv, region)));
    return new Map(distinct.map((region, i) => [region, reads[i]]));
  }

  /** Distinct free entries for the group, read once per (serving pool, labels). */
  async #candidates(
    group: Waiting[],
    servedBy: (waiting: Waiting) => string,
  ): Promise<Map<Waiting, Deno.KvEntry<FreeSlot>>> {
    const byPool = new Map<string, Waiting[]>();
    for (const waiting of group) {
      const { input } = waiting.job.request;
      const key = JSON.stringify([servedBy(waiting), input.labels ?? null]);
      byPool.set(key, [...(byPool.get(key) ?? []), waiting]);
    }
    // Each search is bounded, so that labels few free slots match cannot hold up the group
    // (and every claim behind it): claims they leave without a candidate go alone, beside
    // the groups, where the search reads the whole index if it has to.
    const pools = [...byPool];
    const found = await Promise.all(pools.map(([key, waiting]) => {
      const [servedBy] = JSON.parse(key) as [string];
      const labels = waiting[0].job.request.input.labels;
      return findFreeSlots(this.kv, servedBy, labels, waiting.length + 4, LABEL_SCAN_LIMIT);
    }));
    const assigned = new Map<Waiting, Deno.KvEntry<FreeSlot>>();
    const taken = new Set<string>();
    for (const [i, [, waiting]] of pools.entries()) {
      const free = found[i];
      let next = 0;
      for (const w of waiting) {
        while (next < free.length && taken.has(JSON.stringify(free[next].key))) next++;
        if (next >= free.length) break;
        taken.add(JSON.stringify(free[next].key));
        assigned.set(w, free[next++]);
      }
    }
    return assigned;
  }
}
