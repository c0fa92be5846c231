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
  findFreeSlots,
  type GrantDraft,
  type PreparedClaim,
  stageClaim,
  withTokens,
} from "./allocate.ts";
import { ATOMIC_LIMITS } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { type ClaimRoute, routeClaim } from "./fallback.ts";
import type { FreeSlot } from "./pool.ts";

/** Counters for metrics and the bench. */
export interface GroupStats {
  commits: number;
  claims: number;
  /** Claims that went to the lone path (no candidate in the group, or a failed group). */
  alone: number;
  failedGroups: number;
}

interface Waiting {
  claim: PreparedClaim;
  resolve: (outcome: ClaimOutcome) => void;
  reject: (error: unknown) => void;
}

/** Most claims in one commit: bounded by 100 checks (2-3 a claim) and 1,000 mutations. */
const MAX_GROUP = 48;

/** Coalesces concurrent claims of one isolate into shared atomic commits. */
export class GroupCommitter implements Allocator {
  readonly stats: GroupStats = { commits: 0, claims: 0, alone: 0, failedGroups: 0 };
  #queue: Waiting[] = [];
  #running = false;

  constructor(private readonly kv: Deno.Kv, private readonly clock: Clock) {}

  /** Queues a claim; resolves with its own grant or rejects with its own error. */
  allocate(claim: PreparedClaim): Promise<ClaimOutcome> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ claim, resolve, reject });
      if (!this.#running) void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#running = true;
    try {
      while (this.#queue.length > 0) await this.#commitGroup(this.#takeGroup());
    } finally {
      this.#running = false;
    }
  }

  /** The next claims whose checks fit one atomic; a repeated idempotency key waits a turn. */
  #takeGroup(): Waiting[] {
    const group: Waiting[] = [];
    const rest: Waiting[] = [];
    const idemKeys = new Set<string>();
    let checks = 0;
    for (const waiting of this.#queue) {
      const idem = waiting.claim.idemKey ? JSON.stringify(waiting.claim.idemKey) : null;
      const cost = checksOf(waiting.claim);
      if (
        group.length >= MAX_GROUP || checks + cost > ATOMIC_LIMITS.checks ||
        (idem !== null && idemKeys.has(idem))
      ) {
        rest.push(waiting);
        continue;
      }
      if (idem !== null) idemKeys.add(idem);
      checks += cost;
      group.push(waiting);
    }
    this.#queue = rest;
    return group;
  }

  async #commitGroup(group: Waiting[]): Promise<void> {
    let routes: Map<string, ClaimRoute>;
    try {
      routes = await this.#routes(group);
    } catch (error) {
      for (const waiting of group) waiting.reject(error);
      return;
    }
    const candidates = await this.#candidates(group, routes);
    const op = this.kv.atomic();
    const staged: Array<{ waiting: Waiting; draft: GrantDraft; index: number }> = [];
    const alone: Waiting[] = [];
    for (const waiting of group) {
      const free = candidates.get(waiting);
      if (!free) {
        alone.push(waiting);
        continue;
      }
      const route = routes.get(waiting.claim.request.region)!;
      const index = staged.length;
      const draft = await stageClaim(
        op,
        this.clock,
        waiting.claim,
        route,
        route.servedBy,
        free,
        index,
      );
      staged.push({ waiting, draft, index });
    }
    if (staged.length > 0) {
      const res = await op.commit().catch((error) => ({ ok: false as const, error }));
      if (res.ok) {
        this.stats.commits++;
        this.stats.claims += staged.length;
        for (const { waiting, draft, index } of staged) {
          waiting.resolve({ grant: withTokens(draft, res.versionstamp, index), replayed: false });
        }
      } else {
        this.stats.failedGroups++;
        alone.push(...staged.map((s) => s.waiting));
      }
    }
    // The lone path re-reads, sweeps expired leases, answers 503, or replays a raced key.
    this.stats.alone += alone.length;
    await Promise.all(alone.map(async (waiting) => {
      const route = routes.get(waiting.claim.request.region)!;
      try {
        waiting.resolve(await allocateAlone(this.kv, this.clock, waiting.claim, route));
      } catch (error) {
        waiting.reject(error);
      }
    }));
  }

  /** One routing decision per region per group. */
  async #routes(group: Waiting[]): Promise<Map<string, ClaimRoute>> {
    const regions = [...new Set(group.map((w) => w.claim.request.region))];
    const routes = await Promise.all(regions.map((r) => routeClaim(this.kv, this.clock, r)));
    return new Map(regions.map((r, i) => [r, routes[i]]));
  }

  /** Distinct free entries for the group, read once per (pool, labels). */
  async #candidates(
    group: Waiting[],
    routes: Map<string, ClaimRoute>,
  ): Promise<Map<Waiting, Deno.KvEntry<FreeSlot>>> {
    const byPool = new Map<string, Waiting[]>();
    for (const waiting of group) {
      const { region, input } = waiting.claim.request;
      const key = JSON.stringify([routes.get(region)!.servedBy, input.labels ?? null]);
      byPool.set(key, [...(byPool.get(key) ?? []), waiting]);
    }
    const assigned = new Map<Waiting, Deno.KvEntry<FreeSlot>>();
    const taken = new Set<string>();
    for (const [key, waiting] of byPool) {
      const [servedBy] = JSON.parse(key) as [string];
      const labels = waiting[0].claim.request.input.labels;
      const free = await findFreeSlots(this.kv, servedBy, labels, waiting.length + 4);
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
