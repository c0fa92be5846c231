/**
 * Group commit for renews: renews that arrive while a commit is in flight go out
 * together, each with its own check on the claim it read, sharing one sweeper check
 * and one write mark per serving region. A renew the group cannot settle on its own
 * reads (a lease past expiry, a resource gone, an Idempotency-Key to write again), and
 * every renew of a group that lost a race, goes through renewAlone, which re-reads and
 * settles it.
 */
import { ATOMIC_LIMITS } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import {
  guardRenew,
  renewAlone,
  type Renewed,
  renewedRecord,
  type Renewer,
  type RenewJob,
  renewReadKeys,
  stageRenew,
} from "./claims.ts";
import { needsKeyRefresh } from "./idempotency.ts";
import { answerEach, CommitQueue, type Pending } from "./commit_queue.ts";
import { CommitEffects, getAll } from "./kv.ts";
import { log } from "./log.ts";
import { claimIdRegion, claimKeyOf, claimNotFound, type ClaimRecord, claimView } from "./leases.ts";
import type { ResourceSpec } from "./pool.ts";
import type { RegionConfig } from "./schemas.ts";
import { stageSweepers, type SweeperBeat, sweeperKeys, type SweeperState } from "./sweeper.ts";

interface RenewRequest {
  claimId: string;
  renew: RenewJob;
}

type Waiting = Pending<RenewRequest, Renewed>;

/**
 * Checks a group of renews adds: one per renew (its claim) and one per serving region
 * (its sweeper). Mutations stay far below the limit: 3 per renew, at most 4 per region.
 */
function checksOf(group: readonly RenewRequest[]): number {
  return group.length + new Set(group.map((r) => claimIdRegion(r.claimId))).size;
}

/** Renews waiting for a group beyond which new ones get 503. */
export const MAX_QUEUED_RENEWS = 2048;

/** Counters for metrics and the bench. */
export interface RenewerStats {
  commits: number;
  renewed: number;
  /**
   * Renews that went through renewAlone: past expiry, resource gone, an Idempotency-Key to
   * write again, or a failed group.
   */
  alone: number;
}

/** Coalesces concurrent renews of one isolate into shared atomic commits. */
export class GroupRenewer implements Renewer {
  readonly stats: RenewerStats = { commits: 0, renewed: 0, alone: 0 };
  readonly #queue: CommitQueue<RenewRequest, Renewed>;

  constructor(private readonly kv: Deno.Kv, private readonly clock: Clock) {
    this.#queue = new CommitQueue({
      what: "renews",
      maxQueued: MAX_QUEUED_RENEWS,
      // The same claim twice in one group waits a turn: the repeat renews what the first wrote.
      // A full group is told apart at once: the queue asks this of every waiting renew.
      fits: (group, request) =>
        group.length + 2 <= ATOMIC_LIMITS.checks &&
        checksOf([...group, request]) <= ATOMIC_LIMITS.checks &&
        !group.some((r) => r.claimId === request.claimId),
      run: (group) => this.#commitGroup(group),
      alone: (request) => this.#renewAlone(request),
    });
  }

  /** Queues a renew; settles with its own outcome. */
  renew(claimId: string, job: RenewJob): Promise<Renewed> {
    return this.#queue.push({ claimId, renew: job });
  }

  async #commitGroup(group: Waiting[]): Promise<void> {
    const found = group.filter((w) => {
      if (claimKeyOf(w.job.claimId) !== null) return true;
      w.reject(claimNotFound(w.job.claimId));
      return false;
    });
    const claims = await getAll<ClaimRecord>(
      this.kv,
      found.map((w) => claimKeyOf(w.job.claimId)!),
    );
    const alone: Waiting[] = [];
    const live: Array<{ waiting: Waiting; entry: Deno.KvEntry<ClaimRecord> }> = [];
    found.forEach((waiting, i) => {
      const entry = claims[i];
      if (entry.versionstamp === null) {
        return waiting.reject(claimNotFound(waiting.job.claimId));
      }
      try {
        guardRenew(entry.value, waiting.job.renew);
      } catch (error) {
        return waiting.reject(error); // a bad secret or scope, or a lease already ended
      }
      // A lease past its expiry is expired (and answered 409) by the lone path.
      if (entry.value.expiresAt <= this.clock.now()) return alone.push(waiting);
      live.push({ waiting, entry: entry as Deno.KvEntry<ClaimRecord> });
    });

    // Region configs, specs and sweep chains, each key read once for the whole group.
    const wanted = new Map<string, Deno.KvKey>();
    for (const { entry } of live) {
      for (const key of renewReadKeys(entry.value)) wanted.set(JSON.stringify(key), key);
    }
    const reads = await getAll<unknown>(this.kv, [...wanted.values()]);
    const byKey = new Map([...wanted.keys()].map((k, i) => [k, reads[i]]));
    const read = <T>(key: Deno.KvKey) => byKey.get(JSON.stringify(key)) as Deno.KvEntryMaybe<T>;

    const op = this.kv.atomic();
    const effects = new CommitEffects();
    const staged: Array<{ waiting: Waiting; key: Deno.KvKey; renewed: ClaimRecord }> = [];
    for (const { waiting, entry } of live) {
      // Again after the last read: a renew must not commit a lease that has run out.
      if (entry.value.expiresAt <= this.clock.now()) {
        alone.push(waiting);
        continue;
      }
      const [configKey, specKey] = renewReadKeys(entry.value);
      const spec = read<ResourceSpec>(specKey).value;
      // A lease on a gone resource is lost (and answered 409) by the lone path.
      if (spec === null || spec.state === "gone") {
        alone.push(waiting);
        continue;
      }
      const config = read<RegionConfig>(configKey).value;
      const renewed = renewedRecord(this.clock, entry, config, waiting.job.renew.leaseMs);
      // A renew that must also write its Idempotency-Key again (about once a day of
      // renewals) reads that key on the lone path.
      if (needsKeyRefresh(entry.value, renewed.expiresAt)) {
        alone.push(waiting);
        continue;
      }
      stageRenew(op, entry, renewed);
      effects.touch(renewed.servedBy);
      staged.push({ waiting, key: entry.key, renewed });
    }
    if (staged.length > 0) {
      stageSweepers(op, this.clock, staged.map((s) => s.renewed), (region) => {
        const [stateKey, beatKey] = sweeperKeys(region);
        return { state: read<SweeperState>(stateKey), beat: read<SweeperBeat>(beatKey) };
      });
      effects.flush(op);
      // A commit that throws (not one that fails its checks) is a bug worth seeing; its
      // renews still get answers, from the lone path.
      const res = await op.commit().catch((error) => {
        log("warn", "a renew group's commit threw; its renews retry alone", {
          renews: staged.length,
          error: String(error),
        });
        return { ok: false as const };
      });
      if (res.ok) {
        this.stats.commits++;
        this.stats.renewed += staged.length;
        for (const { waiting, key, renewed } of staged) {
          waiting.resolve({
            claim: claimView({ key, value: renewed, versionstamp: res.versionstamp }),
            consistencyToken: res.versionstamp,
          });
        }
      } else {
        alone.push(...staged.map((s) => s.waiting));
      }
    }
    await answerEach(alone, (waiting) => this.#renewAlone(waiting.job));
  }

  /** Renews one lease with its own CAS loop (see RenewerStats.alone for when). */
  #renewAlone(request: RenewRequest): Promise<Renewed> {
    this.stats.alone++;
    return renewAlone(this.kv, this.clock, request.claimId, request.renew);
  }
}
