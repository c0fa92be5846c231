/**
 * The mixed load of a chaos or soak run, over real HTTP, recording what callers were told:
 * holders claim (with an Idempotency-Key, retried with the same key when no answer came),
 * renew, release, read and abandon their claims; an agent reports status batches with
 * per-resource sequence numbers. Every acknowledged answer goes into a history for
 * tests/_checker.ts, with real timestamps; what must survive (201 claims, 204 releases,
 * 202 status batches) is kept for the audit after the run.
 */
import { grantEvent, HistoryRecorder, isoMs } from "../tests/_checker.ts";
import type { Answer, ApiClient, Outcome } from "./http.ts";
import { CHAOS_TOKENS, sleep } from "./server.ts";

/** The shape of the load. */
export interface WorkloadOptions {
  /** The region claims ask for and status is reported to. */
  region: string;
  /** Resources of `region` the agent reports on. */
  resources: readonly string[];
  /** Concurrent holders, each acting on one claim at a time. */
  holders: number;
  /** Lease lengths that claims and renews ask for, ms [min, max]. */
  leaseMs: readonly [number, number];
  /**
   * From the start of one holder operation to the start of its next, ms [min, max]: a
   * steady pace whatever the latency (no pause after an operation that took longer).
   */
  intervalMs: readonly [number, number];
  /** From the start of one status batch to the start of the next, ms [min, max]. */
  statusIntervalMs: readonly [number, number];
  /** Updates per status batch [min, max]. */
  statusUpdates: readonly [number, number];
  /** Share of updates that report `draining` (the rest `ready`). */
  drainingShare: number;
  random: () => number;
}

/** An acknowledged grant, as answered. */
export interface GrantRecord {
  id: string;
  servedBy: string;
  resource: string;
  slot: number;
  fencingToken: string;
}

/** One status update as sent. */
export interface UpdateRecord {
  seq: number;
  state: "ready" | "draining";
  load: number;
}

/** Something callers were told that the contract does not allow (a 500, a 503 without Retry-After…). */
export interface Unexpected {
  what: string;
  status: number;
  body: unknown;
}

/** How often the same request is resent, waiting for the server between tries, before giving up. */
const MAX_RESENDS = 40;
const RESEND_PAUSE_MS = 50;
/** A holder refused for capacity asks again after this (shorter than Retry-After, to keep up the pressure). */
const NO_CAPACITY_PAUSE_MS = [100, 400] as const;

type HolderAction = "renew" | "release" | "read" | "idle" | "stall" | "abandon";
/** Shares of what a holder does with its claim; "stall" outlives the lease now and then. */
const ACTIONS: ReadonlyArray<[HolderAction, number]> = [
  ["renew", 0.3],
  ["release", 0.3],
  ["read", 0.1],
  ["idle", 0.15],
  ["stall", 0.1],
  ["abandon", 0.05],
];

interface Held {
  id: string;
  secret: string;
}

/** Runs holders and an agent until stopped, recording the history. */
export class Workload {
  readonly history = new HistoryRecorder({ now: () => Date.now() });
  readonly grants = new Map<string, GrantRecord>();
  /** Claims whose release was answered 204. */
  readonly released = new Set<string>();
  /** Per resource, the highest-seq update of a batch answered 202. */
  readonly statusAcked = new Map<string, UpdateRecord>();
  /** Per resource, the highest seq sent (answered or not). */
  readonly statusSent = new Map<string, number>();
  /** Answers by operation and status (`claim 201`, `renew no-answer`, ...). */
  readonly counts: Record<string, number> = {};
  /** Latencies of answered requests by operation, ms. */
  readonly latencies: Record<string, number[]> = {};
  readonly unexpected: Unexpected[] = [];
  /** Claims granted from another region's pool (fallback). */
  servedByBackup = 0;
  /** Claims whose answer came from an idempotent replay (the first answer was lost). */
  replays = 0;
  /** An upper bound (epoch ms) on the expiry of every lease granted or renewed so far. */
  leaseHorizon = 0;
  #stopping = false;
  #claims = 0;

  constructor(
    private readonly api: ApiClient,
    /** Resolves while the server serves (waits through a restart). */
    private readonly ready: () => Promise<void>,
    private readonly options: WorkloadOptions,
  ) {}

  /** Answers recorded (every answered request, whatever its status). */
  get operations(): number {
    return Object.entries(this.counts)
      .filter(([key]) => !key.endsWith("no-answer"))
      .reduce((sum, [, n]) => sum + n, 0);
  }

  /** Runs until `stop()`; resolves once every holder and the agent have finished. */
  async run(): Promise<void> {
    const holders = Array.from({ length: this.options.holders }, (_, i) => this.#holder(i));
    await Promise.all([...holders, this.#agent()]);
  }

  /** Asks every loop to finish after its current operation. */
  stop(): void {
    this.#stopping = true;
  }

  /** Reports every resource ready (newest seqs), resending until answered 202. */
  async reportAllReady(): Promise<void> {
    const updates = this.options.resources.map((resource) => this.#update(resource, "ready"));
    for (let i = 0; i < MAX_RESENDS; i++) {
      if (await this.#sendStatus(updates) === 202) return;
      await sleep(RESEND_PAUSE_MS);
    }
    throw new Error("the final status batch was never accepted");
  }

  #between([min, max]: readonly [number, number]): number {
    return min + Math.floor(this.options.random() * (max - min + 1));
  }

  /** Waits until a random interval has passed since `started`. */
  async #pace(started: number, interval: readonly [number, number]): Promise<void> {
    await sleep(Math.max(0, started + this.#between(interval) - Date.now()));
  }

  #count(what: string, outcome: Outcome): void {
    const key = `${what} ${outcome.ok ? outcome.status : "no-answer"}`;
    this.counts[key] = (this.counts[key] ?? 0) + 1;
    if (outcome.ok) (this.latencies[what] ??= []).push(outcome.ms);
  }

  /** Records an answer outside `allowed`, or a 503 without Retry-After. */
  #expect(what: string, answer: Answer, allowed: readonly number[]): boolean {
    const fine = allowed.includes(answer.status) &&
      (answer.status !== 503 || answer.headers.get("retry-after") !== null);
    if (!fine) this.unexpected.push({ what, status: answer.status, body: answer.body });
    return fine;
  }

  /** Sends a request, resending it (same body and headers) while no answer comes. */
  async #resend(
    what: string,
    send: () => Promise<Outcome>,
  ): Promise<Answer | null> {
    for (let i = 0; i < MAX_RESENDS; i++) {
      await this.ready();
      const outcome = await send();
      this.#count(what, outcome);
      if (outcome.ok) return outcome;
      await sleep(RESEND_PAUSE_MS);
    }
    return null;
  }

  async #holder(index: number): Promise<void> {
    let held: Held | null = null;
    while (!this.#stopping) {
      await this.ready();
      const started = Date.now();
      held = held === null ? await this.#claim(index) : await this.#act(held);
      await this.#pace(started, this.options.intervalMs);
    }
  }

  async #claim(index: number): Promise<Held | null> {
    const { region, leaseMs } = this.options;
    const body = { holder: `holder-${index}`, leaseMs: this.#between(leaseMs) };
    const key = `chaos-${index}-${this.#claims++}-${crypto.randomUUID()}`;
    const invoked = this.history.now();
    const answer = await this.#resend(
      "claim",
      () =>
        this.api.call("POST", `/v1/regions/${region}/claims`, {
          token: CHAOS_TOKENS.client,
          body,
          headers: { "idempotency-key": key },
        }),
    );
    const acked = this.history.now();
    this.leaseHorizon = Math.max(this.leaseHorizon, acked.time + body.leaseMs);
    if (answer === null || !this.#expect("claim", answer, [201, 503])) return null;
    if (answer.status !== 201) {
      await sleep(this.#between(NO_CAPACITY_PAUSE_MS));
      return null;
    }
    const g = answer.body;
    if (answer.headers.get("idempotent-replayed") === "true") this.replays++;
    if (g.servedBy !== region) this.servedByBackup++;
    this.grants.set(g.id, {
      id: g.id,
      servedBy: g.servedBy,
      resource: g.resource,
      slot: g.slot,
      fencingToken: g.fencingToken,
    });
    this.history.record(grantEvent(g, invoked, acked));
    return { id: g.id, secret: g.secret };
  }

  async #act(held: Held): Promise<Held | null> {
    let roll = this.options.random();
    const action = ACTIONS.find(([, share]) => (roll -= share) < 0)?.[0] ?? "idle";
    switch (action) {
      case "renew":
        return await this.#renew(held);
      case "release":
        return await this.#release(held);
      case "read":
        return await this.#read(held);
      case "idle":
        return held;
      case "stall": // a holder that pauses for about a lease: its next renew or release may be late
        await sleep(this.#between(this.options.leaseMs));
        return held;
      case "abandon":
        return null; // never touched again: only expiry frees its slot
    }
  }

  async #renew(held: Held): Promise<Held | null> {
    const leaseMs = this.#between(this.options.leaseMs);
    const invoked = this.history.now();
    const outcome = await this.api.call("POST", `/v1/claims/${held.id}/renew`, {
      token: CHAOS_TOKENS.client,
      body: { leaseMs },
      headers: { "allot-claim-secret": held.secret },
    });
    const acked = this.history.now();
    this.#count("renew", outcome);
    this.leaseHorizon = Math.max(this.leaseHorizon, acked.time + leaseMs);
    if (!outcome.ok) {
      // It may have committed with an expiry we never learnt: never touch the claim again.
      this.history.record({ kind: "uncertain", claimId: held.id, invoked, acked });
      return null;
    }
    if (!this.#expect("renew", outcome, [200, 409, 503])) return null;
    if (outcome.status === 200) {
      this.history.record({
        kind: "renew",
        claimId: held.id,
        expiresAt: isoMs(outcome.body.leaseExpiresAt),
        fencingToken: outcome.body.fencingToken,
        invoked,
        acked,
      });
      return held;
    }
    if (outcome.status === 409) {
      this.history.record({ kind: "ended", claimId: held.id, why: "renew 409", invoked, acked });
      return null;
    }
    return held; // 503: nothing was committed
  }

  /** Releases; when no answer comes, records the uncertainty and releases again. */
  async #release(held: Held): Promise<Held | null> {
    for (let i = 0; i < MAX_RESENDS; i++) {
      await this.ready();
      const invoked = this.history.now();
      const outcome = await this.api.call("DELETE", `/v1/claims/${held.id}`, {
        token: CHAOS_TOKENS.client,
        headers: { "allot-claim-secret": held.secret },
      });
      const acked = this.history.now();
      this.#count("release", outcome);
      if (!outcome.ok) {
        this.history.record({ kind: "uncertain", claimId: held.id, invoked, acked });
        await sleep(RESEND_PAUSE_MS);
        continue;
      }
      if (!this.#expect("release", outcome, [204, 409, 503])) return null;
      if (outcome.status === 204) {
        // After an unanswered release, a 204 may replay that one, which may have landed
        // before the lease ran out: it proves the lease ended, not that this call ended it.
        this.history.record(
          i === 0 ? { kind: "release", claimId: held.id, invoked, acked } : {
            kind: "ended",
            claimId: held.id,
            why: "release 204 after a lost answer",
            invoked,
            acked,
          },
        );
        this.released.add(held.id);
      } else if (outcome.status === 409) {
        this.history.record({
          kind: "ended",
          claimId: held.id,
          why: "release 409",
          invoked,
          acked,
        });
      }
      return outcome.status === 503 ? held : null;
    }
    return null;
  }

  async #read(held: Held): Promise<Held | null> {
    const invoked = this.history.now();
    const outcome = await this.api.call("GET", `/v1/claims/${held.id}`, {
      token: CHAOS_TOKENS.client,
    });
    const acked = this.history.now();
    this.#count("read", outcome);
    if (!outcome.ok || !this.#expect("read", outcome, [200])) return held;
    const granted = this.grants.get(held.id)!;
    if (outcome.body.fencingToken !== granted.fencingToken) {
      this.unexpected.push({
        what: "read: fencing token changed",
        status: 200,
        body: outcome.body,
      });
    }
    if (outcome.body.state === "active") return held;
    this.history.record({
      kind: "ended",
      claimId: held.id,
      why: outcome.body.state,
      invoked,
      acked,
    });
    return null;
  }

  async #agent(): Promise<void> {
    const { resources, statusUpdates, statusIntervalMs, drainingShare, random } = this.options;
    while (!this.#stopping) {
      const started = Date.now();
      const count = Math.min(resources.length, this.#between(statusUpdates));
      const picked = new Set<string>();
      while (picked.size < count) picked.add(resources[Math.floor(random() * resources.length)]);
      const updates = [...picked].map((resource) =>
        this.#update(resource, random() < drainingShare ? "draining" : "ready")
      );
      await this.#sendStatus(updates);
      await this.#pace(started, statusIntervalMs);
    }
  }

  #update(resource: string, state: UpdateRecord["state"]) {
    const seq = (this.statusSent.get(resource) ?? 0) + 1;
    this.statusSent.set(resource, seq);
    return { resource, seq, state, load: Math.round(this.options.random() * 1000) / 1000 };
  }

  /** Sends one batch (resent while unanswered); returns the status answered, or null. */
  async #sendStatus(
    updates: ReadonlyArray<{ resource: string } & UpdateRecord>,
  ): Promise<number | null> {
    const answer = await this.#resend(
      "status",
      () =>
        this.api.call("POST", `/v1/regions/${this.options.region}/status`, {
          token: CHAOS_TOKENS.agent,
          body: { updates },
        }),
    );
    if (answer === null || !this.#expect("status", answer, [202, 503])) return null;
    if (answer.status === 202) {
      for (const { resource, ...update } of updates) {
        const known = this.statusAcked.get(resource);
        if (!known || known.seq < update.seq) this.statusAcked.set(resource, update);
      }
    }
    return answer.status;
  }
}
