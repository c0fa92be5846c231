/**
 * Group commit for lease ends (releases): releases that arrive while a commit is in
 * flight go out together, each with its own checks on claim, spec and slot. A group
 * that loses a race fails whole and its releases retry alone.
 */
import { ATOMIC_LIMITS } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { answerEach, CommitQueue, type Pending } from "./commit_queue.ts";
import { CommitEffects, getAll } from "./kv.ts";
import { log } from "./log.ts";
import {
  claimKeyOf,
  claimNotFound,
  type ClaimRecord,
  endLease,
  type LeaseEnd,
  type LeaseEnded,
  type LeaseEnder,
  leaseEndKeys,
  LeasePlaces,
  stageLeaseEnd,
} from "./leases.ts";
import type { HeldSlot, ResourceSpec } from "./pool.ts";

interface EndJob {
  claimId: string;
  end: LeaseEnd;
}

/** Checks one lease end adds (claim, spec, slot). */
const CHECKS_PER_END = 3;
/** Releases waiting for a group beyond which new ones get 503. */
export const MAX_QUEUED_ENDS = 2048;

/** Counters for metrics and the bench. */
export interface EnderStats {
  commits: number;
  ended: number;
  /** Lease ends retried alone after their group failed. */
  alone: number;
}

/** Coalesces concurrent lease ends of one isolate into shared atomic commits. */
export class GroupEnder implements LeaseEnder {
  readonly stats: EnderStats = { commits: 0, ended: 0, alone: 0 };
  readonly #queue: CommitQueue<EndJob, LeaseEnded>;

  constructor(
    private readonly kv: Deno.Kv,
    private readonly clock: Clock,
    private readonly places: LeasePlaces = new LeasePlaces(),
  ) {
    this.#queue = new CommitQueue({
      what: "releases",
      maxQueued: MAX_QUEUED_ENDS,
      // The same claim twice in one group waits a turn: the repeat then finds it ended.
      fits: (group, job) =>
        (group.length + 1) * CHECKS_PER_END <= ATOMIC_LIMITS.checks &&
        !group.some((j) => j.claimId === job.claimId),
      run: (group) => this.#commitGroup(group),
      alone: (job) => this.#endAlone(job),
    });
  }

  /** Queues a lease end; settles with its own outcome. */
  end(claimId: string, end: LeaseEnd): Promise<LeaseEnded> {
    return this.#queue.push({ claimId, end });
  }

  async #commitGroup(group: Pending<EndJob, LeaseEnded>[]): Promise<void> {
    const found = group.filter((p) => {
      if (claimKeyOf(p.job.claimId) !== null) return true;
      p.reject(claimNotFound(p.job.claimId));
      return false;
    });
    // A remembered place lets the claim, its spec and its slot be read together.
    const places = found.map((p) => this.places.take(p.job.claimId));
    const first = await getAll<ClaimRecord | ResourceSpec | HeldSlot>(
      this.kv,
      found.flatMap((p, i) => {
        const claimKey = claimKeyOf(p.job.claimId)!;
        return places[i] ? [claimKey, ...leaseEndKeys(places[i])] : [claimKey];
      }),
    );
    const reads: Array<{ claim: Deno.KvEntryMaybe<ClaimRecord>; related: unknown[] | null }> = [];
    for (let i = 0, at = 0; i < found.length; i++) {
      const claim = first[at] as Deno.KvEntryMaybe<ClaimRecord>;
      reads.push({ claim, related: places[i] ? first.slice(at + 1, at + 3) : null });
      at += places[i] ? 3 : 1;
    }
    const live = found.flatMap((p, i) => {
      const { claim, related } = reads[i];
      if (claim.versionstamp !== null) {
        return [{ pending: p, claim: claim as Deno.KvEntry<ClaimRecord>, related }];
      }
      p.reject(claimNotFound(p.job.claimId));
      return [];
    });
    const unplaced = live.filter((l) => l.related === null);
    const second = await getAll<ResourceSpec | HeldSlot>(
      this.kv,
      unplaced.flatMap(({ claim }) => leaseEndKeys(claim.value)),
    );
    unplaced.forEach((l, i) => l.related = second.slice(2 * i, 2 * i + 2));
    const op = this.kv.atomic();
    const effects = new CommitEffects();
    const staged: Array<
      { pending: Pending<EndJob, LeaseEnded>; ended: ClaimRecord; key: Deno.KvKey }
    > = [];
    live.forEach(({ pending, claim, related }) => {
      const read = {
        claim,
        spec: related![0] as Deno.KvEntryMaybe<ResourceSpec>,
        slot: related![1] as Deno.KvEntryMaybe<HeldSlot>,
      };
      try {
        staged.push({
          pending,
          ended: stageLeaseEnd(op, effects, this.clock, read, pending.job.end),
          key: claim.key,
        });
      } catch (error) {
        pending.reject(error); // a bad secret or a lease already ended: nothing was staged
      }
    });
    if (staged.length === 0) return;
    effects.flush(op);
    // A commit that throws (not one that fails its checks) is a bug worth seeing; its lease
    // ends still get answers, from the lone path, as a failed group's do.
    const res = await op.commit().catch((error) => {
      log("warn", "a lease-end group's commit threw; its lease ends retry alone", {
        ends: staged.length,
        error: String(error),
      });
      return { ok: false as const };
    });
    if (res.ok) {
      this.stats.commits++;
      this.stats.ended += staged.length;
      for (const { pending, ended, key } of staged) {
        pending.resolve({
          entry: { key, value: ended, versionstamp: res.versionstamp },
          consistencyToken: res.versionstamp,
        });
      }
      return;
    }
    await answerEach(staged.map((s) => s.pending), (pending) => this.#endAlone(pending.job));
  }

  /** Ends one lease with its own CAS loop (a failed group's, or a group that threw). */
  #endAlone(job: EndJob): Promise<LeaseEnded> {
    this.stats.alone++;
    return endLease(this.kv, this.clock, job.claimId, job.end);
  }
}
