/**
 * The status consumer. Queue deliveries are buffered for a short window and applied
 * together: many messages per atomic commit, split at Deno KV's limits, each message
 * all-or-nothing whenever its updates fit one commit (ingest sizes them so they do).
 * The buffer is only a batching device: every commit checks what it read, so several
 * isolates consuming at once cannot corrupt state.
 */
import { ATOMIC_LIMITS, AtomicPlan, isSizeLimitError } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { evaluateMode } from "./fallback.ts";
import type { StatusBatchMessage } from "./queue.ts";
import { finishLeaseLoss } from "./resources.ts";
import { log } from "./log.ts";
import { planApply } from "./status.ts";
import { ResourceCache } from "./resource_cache.ts";
import { inSpan, instruments } from "./telemetry.ts";

/** Test-only fault injection; production code never constructs one. */
export interface StatusFaults {
  /** Runs before each commit with the regions it touches: throw to fail it, await to delay it. */
  beforeCommit?(regions: ReadonlySet<string>): void | Promise<void>;
}

/** Counters for metrics and the bench. */
export interface ApplyStats {
  commits: number;
  /** Updates of completed messages. */
  updates: number;
  /** Updates that changed something (the rest were duplicates or superseded). */
  effective: number;
  messages: number;
  conflicts: number;
  /** Deliveries put back in the queue because this isolate held as many as it may. */
  deferred: number;
}

export interface ApplierOptions {
  /** How long deliveries are gathered before a flush (ms). */
  windowMs?: number;
  /** Most messages planned into one commit before splitting. */
  maxMessagesPerCommit?: number;
  /** Most messages held (delivered, not yet applied) before deliveries are deferred. */
  maxHeld?: { total: number; perRegion: number };
  faults?: StatusFaults;
}

interface Waiting {
  message: StatusBatchMessage;
  resolve: () => void;
  reject: (error: unknown) => void;
}

const MAX_CONFLICT_RETRIES = 10;
/** How long a region whose apply conflicted is applied with per-entry checks (planApply checkEach). */
const CONTENDED_MS = 2000;
/** Mutations a commit spends once per region, whatever its size: version, write mark, counters. */
const REGION_MUTATIONS = 8;
/**
 * Deno KV hands a listener every ready message without waiting for earlier ones to finish,
 * so a backlog applied slower than it is delivered (updates that rewrite many free entries,
 * say) would otherwise be held in memory whole. A region may hold 32 messages, enough to
 * keep the applier's commits full, and a flooding region no more: the messages of every
 * other region are still taken at once, and wait behind at most those 32. All regions
 * together hold at most 1,024 (64 MiB of messages at most).
 */
const MAX_HELD = { total: 1024, perRegion: 32 };
/** Shortest and longest wait of a deferred delivery, ms. */
const DEFER_MS = { min: 250, max: 60_000 };
/** The line of deferrals made because all regions together hold their bound (no region's name). */
const ALL_REGIONS = "";
/** Weight of the newest flush in the applied-messages-per-second estimate. */
const RATE_WEIGHT = 0.3;

/** What a commit that Deno KV refused for its size settles to. */
const SIZE_REFUSED = Symbol("size refused");

/** Applies status messages in coalesced, checked commits. */
export class StatusApplier {
  readonly stats: ApplyStats = {
    commits: 0,
    updates: 0,
    effective: 0,
    messages: 0,
    conflicts: 0,
    deferred: 0,
  };
  #buffer: Waiting[] = [];
  #timer: ReturnType<typeof setTimeout> | null = null;
  #flushing: Promise<void> = Promise.resolve();
  readonly #windowMs: number;
  readonly #maxPerCommit: number;
  readonly #maxHeld: { total: number; perRegion: number };
  #held = 0;
  readonly #heldBy = new Map<string, number>();
  /** Messages this isolate applies per second lately; deferrals are spaced by it. */
  #rate = 100;
  /**
   * When (performance.now()) the last deferred delivery of each line is due back: a region's
   * own line, or ALL_REGIONS when the bound of all regions is what is full.
   */
  readonly #deferredUntil = new Map<string, number>();
  readonly #faults: StatusFaults;
  #perUpdate = { checks: 0, mutations: 1 };
  readonly #cache = new ResourceCache();
  /** Regions whose applies conflicted lately, and until when they check each entry. */
  readonly #contendedUntil = new Map<string, number>();

  constructor(
    private readonly kv: Deno.Kv,
    private readonly clock: Clock,
    options: ApplierOptions = {},
  ) {
    this.#windowMs = options.windowMs ?? 5;
    this.#maxPerCommit = options.maxMessagesPerCommit ?? 64;
    this.#maxHeld = options.maxHeld ?? MAX_HELD;
    this.#faults = options.faults ?? {};
  }

  /**
   * Null while this isolate may hold one more delivery of `region`; else how long to put it
   * back in the queue for (ms). Deferred deliveries are spaced at the rate this isolate
   * applies messages, so that each comes back about when there is room, not all at once: on
   * their region's own line when the region holds its share, so that a flooding region's
   * line does not delay another's, and on one line of all regions when the bound of all
   * regions is what is full.
   */
  deferral(region: string): number | null {
    const mine = this.#heldBy.get(region) ?? 0;
    if (this.#held < this.#maxHeld.total && mine < this.#maxHeld.perRegion) return null;
    const line = mine >= this.#maxHeld.perRegion ? region : ALL_REGIONS;
    const now = performance.now();
    const due = Math.min(
      now + DEFER_MS.max,
      Math.max(this.#deferredUntil.get(line) ?? 0, now + DEFER_MS.min) + 1000 / this.#rate,
    );
    this.#deferredUntil.set(line, due);
    this.stats.deferred++;
    return Math.round(due - now);
  }

  /** Buffers one delivery; resolves once its updates are committed (rejects: redeliver it). */
  submit(message: StatusBatchMessage): Promise<void> {
    this.#held++;
    this.#heldBy.set(message.region, (this.#heldBy.get(message.region) ?? 0) + 1);
    return new Promise((resolve, reject) => {
      this.#buffer.push({ message, resolve, reject });
      if (this.#buffer.length >= this.#maxPerCommit) this.#flushSoon(0);
      else this.#flushSoon(this.#windowMs);
    });
  }

  #flushSoon(delay: number): void {
    if (this.#timer !== null) {
      if (delay > 0) return;
      clearTimeout(this.#timer);
    }
    this.#timer = setTimeout(() => {
      this.#timer = null;
      const batch = this.#buffer.splice(0);
      // One flush at a time in this isolate: concurrent flushes would only conflict.
      this.#flushing = this.#flushing.then(() => this.#flush(batch));
    }, delay);
  }

  async #flush(batch: Waiting[]): Promise<void> {
    const started = performance.now();
    // apply() settles each message itself; anything it throws still settles all of them,
    // and keeps this isolate's later flushes running.
    let outcomes: (unknown | null)[];
    try {
      outcomes = await this.apply(batch.map((w) => w.message));
    } catch (error) {
      outcomes = batch.map(() => error);
    }
    const perSecond = batch.length / Math.max(0.001, (performance.now() - started) / 1000);
    this.#rate = RATE_WEIGHT * perSecond + (1 - RATE_WEIGHT) * this.#rate;
    this.#held -= batch.length;
    for (const { message: { region } } of batch) {
      const left = this.#heldBy.get(region)! - 1;
      if (left > 0) this.#heldBy.set(region, left);
      else this.#heldBy.delete(region);
    }
    const now = performance.now();
    for (const [line, due] of this.#deferredUntil) {
      if (due < now) this.#deferredUntil.delete(line);
    }
    batch.forEach((waiting, i) => {
      const error = outcomes[i];
      if (error === null) waiting.resolve();
      else waiting.reject(error);
    });
  }

  /**
   * Applies messages now, in as few commits as the limits allow. Returns, per
   * message, null when committed or the error that stopped its commit.
   */
  async apply(messages: readonly StatusBatchMessage[]): Promise<(unknown | null)[]> {
    const outcomes: (unknown | null)[] = messages.map(() => null);
    const order = messages.map((_m, i) => i)
      .sort((a, b) => messages[a].enqueuedAt - messages[b].enqueuedAt);
    let start = 0;
    let take = this.#firstGuess(order.map((i) => messages[i]));
    while (start < order.length) {
      const indexes = order.slice(start, start + take);
      const group = indexes.map((i) => messages[i]);
      try {
        const overflow = await this.#commitGroup(group);
        if (overflow !== null) {
          if (take > 1) {
            // Shrink in proportion to how far over the limits the plan went (at least by one).
            take = Math.min(take - 1, Math.max(1, Math.floor(take / overflow)));
            continue;
          }
          await this.#commitOversized(group[0]);
        }
      } catch (error) {
        for (const i of indexes) outcomes[i] = error;
      }
      start += indexes.length;
      take = this.#firstGuess(order.slice(start).map((i) => messages[i]));
    }
    return outcomes;
  }

  /**
   * How many messages to plan together: each update costs the checks and mutations per
   * update the last plan needed (a load report: no check, one mutation; a registration:
   * a few of each), and a message one check and two mutations of bookkeeping.
   */
  #firstGuess(queue: readonly StatusBatchMessage[]): number {
    let checks = 0;
    let mutations = REGION_MUTATIONS;
    let take = 0;
    for (const message of queue.slice(0, this.#maxPerCommit)) {
      checks += message.updates.length * this.#perUpdate.checks + 1;
      mutations += message.updates.length * this.#perUpdate.mutations + 2;
      if (take > 0 && (checks > ATOMIC_LIMITS.checks || mutations > ATOMIC_LIMITS.mutations)) {
        break;
      }
      take++;
    }
    return take;
  }

  /**
   * Plans and commits one group. Null when done; when the plan does not fit one atomic,
   * by how much it overflows (see AtomicPlan.overflow), and nothing is committed.
   */
  #commitGroup(
    group: readonly StatusBatchMessage[],
    bookkeep = true,
  ): Promise<number | null> {
    return inSpan("allot.status.apply", { "allot.messages": group.length }, async (span) => {
      for (let attempt = 0; attempt <= MAX_CONFLICT_RETRIES; attempt++) {
        const plan = new AtomicPlan();
        const now = this.clock.now();
        const checkEach = group.some((m) => (this.#contendedUntil.get(m.region) ?? 0) > now);
        const planned = await planApply(this.kv, this.clock, plan, group, {
          bookkeep,
          cache: this.#cache,
          checkEach,
        });
        const updates = group.reduce((n, m) => n + m.updates.length, 0);
        if (updates > 0) {
          this.#perUpdate = {
            checks: Math.max(0, plan.checks - group.length) / updates,
            mutations: Math.max(
              1,
              (plan.mutations - REGION_MUTATIONS - 2 * group.length) / updates,
            ),
          };
        }
        if (!plan.fits()) return plan.overflow();
        if (plan.mutations === 0) return null;
        await this.#faults.beforeCommit?.(planned.regions);
        const res = await plan.commit(this.kv).catch((error): typeof SIZE_REFUSED => {
          // The plan's byte count is an estimate; should Deno KV still refuse the size,
          // split the group like any overflow rather than fail every message in it.
          if (isSizeLimitError(error)) return SIZE_REFUSED;
          throw error;
        });
        if (res === SIZE_REFUSED) return Math.max(2, plan.overflow());
        if (!res.ok) {
          this.stats.conflicts++;
          // Likely another consumer on these regions: check entries, not the one shared key.
          for (const region of planned.regions) {
            this.#contendedUntil.set(region, this.clock.now() + CONTENDED_MS);
          }
          continue;
        }
        planned.committed(res.versionstamp);
        this.stats.commits++;
        const processed = [...planned.processedIn.values()].reduce((sum, n) => sum + n, 0);
        this.stats.updates += processed;
        this.stats.effective += planned.effective;
        this.stats.messages += planned.completed;
        span.setAttributes({ "allot.updates": processed, "allot.retries": attempt });
        for (const [region, updates] of planned.processedIn) {
          instruments.statusUpdates.add(updates, { region });
        }
        instruments.updatesPerCommit.record(processed);
        await this.#afterCommit(planned.regions, planned.gone, res.versionstamp);
        return null;
      }
      throw new Error(`status apply: ${MAX_CONFLICT_RETRIES} conflicting commits in a row`);
    });
  }

  /**
   * A message too large for one atomic is applied in parts, each as large as fits
   * (seq-guarded, so a redelivery after a partial apply converges), and completed last.
   */
  async #commitOversized(message: StatusBatchMessage): Promise<void> {
    // Start from what the last plan's cost per update says fits, not from the whole message.
    let take = Math.max(
      1,
      Math.min(
        message.updates.length,
        Math.floor((ATOMIC_LIMITS.mutations - REGION_MUTATIONS) / this.#perUpdate.mutations),
        this.#perUpdate.checks > 0
          ? Math.floor((ATOMIC_LIMITS.checks - 1) / this.#perUpdate.checks)
          : Infinity,
      ),
    );
    for (let start = 0; start < message.updates.length;) {
      const part = { ...message, updates: message.updates.slice(start, start + take) };
      const overflow = await this.#commitGroup([part], false);
      if (overflow === null) {
        start += part.updates.length;
      } else if (take > 1) {
        take = Math.min(take - 1, Math.max(1, Math.floor(take / overflow)));
      } else {
        throw new Error(
          `status apply: update for "${part.updates[0].resource}" exceeds one atomic`,
        );
      }
    }
    await this.#commitGroup([{ ...message, updates: [] }]);
  }

  async #afterCommit(
    regions: ReadonlySet<string>,
    gone: ReadonlyArray<{ region: string; id: string }>,
    committedAt: string,
  ): Promise<void> {
    for (const { region, id } of gone) {
      // A failure leaves the recorded loss to the region's sweep chain.
      await finishLeaseLoss(this.kv, this.clock, region, id, committedAt).catch(logFailure);
    }
    for (const region of regions) {
      await evaluateMode(this.kv, this.clock, region).catch(logFailure);
    }
  }
}

function logFailure(error: unknown): void {
  log("warn", "after-apply step failed", { error: String(error) });
}
