/**
 * Overload: bursts of concurrent claims and releases far past the group-commit queues'
 * caps (MAX_QUEUED_CLAIMS, MAX_QUEUED_ENDS), and a status flood past the backlog bound
 * (MAX_PENDING_UPDATES), against the real server over keep-alive fetch. It shows the
 * server refusing with 503 + Retry-After rather than queueing without bound: the figures
 * are the answers by status and the latency percentiles of each burst. Latencies are seen
 * by the client, which shares the machine: past a few thousand connections its own cost
 * (and the server's accepting them) dominates, so what bounds the server's work is the
 * number admitted per burst, about the cap whatever the burst. Not a CI test.
 *
 *   deno task overload [--bursts=500,2000,4000] [--flood-seconds=10] [--senders=32]
 */
import { parseArgs } from "node:util";
import { MAX_QUEUED_ENDS } from "../lib/ender.ts";
import { MAX_QUEUED_CLAIMS } from "../lib/group.ts";
import { MAX_PENDING_UPDATES } from "../lib/status.ts";
import { regionHealth } from "./audit.ts";
import { ApiClient, type Outcome } from "./http.ts";
import { CHAOS_TOKENS, ServerProcess, sleep } from "./server.ts";
import { formatPercentiles, type Percentiles, percentiles } from "./stats.ts";

/** The shape of an overload run. */
export interface OverloadOptions {
  /** Concurrent claims of each burst (each followed by a burst of their releases). */
  bursts: number[];
  /** Length of the status flood, s. */
  floodSeconds: number;
  /** Concurrent status senders in the flood. */
  senders: number;
  /** Updates per status batch in the flood. */
  updatesPerBatch: number;
  /** Progress lines; silent when omitted. */
  log?: (line: string) => void;
}

/** Answers to a set of requests: by status (`503 unavailable` names the problem type). */
export interface Tally {
  statuses: Record<string, number>;
  /** Requests that got no answer (transport error or timeout). */
  noAnswer: number;
  /** 429/503 answers without a Retry-After header. */
  missingRetryAfter: number;
  /** Answers outside the contract: 5xx other than 503, 4xx other than 409/429. */
  unexpected: number;
  /** Latency of every answer. */
  latency: Percentiles;
  /** Latency of the 2xx answers only. */
  acceptedLatency: Percentiles;
}

/** One burst: its claims, then the releases of what it was granted. */
export interface BurstResult {
  concurrency: number;
  claims: Tally;
  releases: Tally;
}

/** The status flood and what it did to the backlog. */
export interface FloodResult {
  seconds: number;
  senders: number;
  updatesPerBatch: number;
  status: Tally;
  acceptedUpdates: number;
  /** Highest `pending` and `lagMs` sampled while flooding. */
  maxPending: number;
  maxLagMs: number;
  /** Seconds from the end of the flood until nothing was pending (null: not within the bound). */
  drainSeconds: number | null;
  /** Claims (each then released) made while the flood ran. */
  claimsDuringFlood: Tally;
}

/** What an overload run measured and whether the bounds held. */
export interface OverloadResult {
  caps: { queuedClaims: number; queuedReleases: number; pendingUpdates: number };
  bursts: BurstResult[];
  flood: FloodResult;
  verdict: {
    /** Bursts past a cap were partly refused with 503 (the cap was reached, and held). */
    refusedPastCap: boolean;
    /** Every 429/503 carried Retry-After, and nothing outside the contract was answered. */
    refusalsWellFormed: boolean;
    /** The sampled backlog stayed within the bound plus one round of in-flight batches. */
    backlogBounded: boolean;
  };
}

/** The defaults of `deno task overload`: the largest burst is about twice the claim cap. */
export const DEFAULT_OVERLOAD: Omit<OverloadOptions, "log"> = {
  bursts: [500, 2000, 4000],
  floodSeconds: 10,
  senders: 32,
  updatesPerBatch: 1000,
};

const REGION = "burst";
const SLOTS_PER_RESOURCE = 64;
const STATUS_RESOURCES = 200;
const LONG_LEASE_MS = 600_000;
const SAMPLE_MS = 250;
const DRAIN_TIMEOUT_MS = 300_000;

/** Counts answers as they come; `tally()` freezes the figures. */
class Counter {
  readonly statuses: Record<string, number> = {};
  noAnswer = 0;
  missingRetryAfter = 0;
  unexpected = 0;
  readonly #all: number[] = [];
  readonly #accepted: number[] = [];

  add(outcome: Outcome): void {
    if (!outcome.ok) {
      this.noAnswer++;
      return;
    }
    const { status, body, headers, ms } = outcome;
    const type = typeof body?.type === "string" ? ` ${body.type.split(":").at(-1)}` : "";
    const key = status >= 400 ? `${status}${type}` : String(status);
    this.statuses[key] = (this.statuses[key] ?? 0) + 1;
    this.#all.push(ms);
    if (status < 300) this.#accepted.push(ms);
    if ((status === 429 || status === 503) && headers.get("retry-after") === null) {
      this.missingRetryAfter++;
    }
    if (
      (status >= 500 && status !== 503) ||
      (status >= 400 && status < 500 && status !== 409 && status !== 429)
    ) {
      this.unexpected++;
    }
  }

  tally(): Tally {
    return {
      statuses: this.statuses,
      noAnswer: this.noAnswer,
      missingRetryAfter: this.missingRetryAfter,
      unexpected: this.unexpected,
      latency: percentiles(this.#all),
      acceptedLatency: percentiles(this.#accepted),
    };
  }
}

async function admin(api: ApiClient, method: string, path: string, body: unknown): Promise<void> {
  const res = await api.call(method, path, { token: CHAOS_TOKENS.admin, body });
  if (!res.ok || res.status >= 300) throw new Error(`seeding ${path}: ${JSON.stringify(res)}`);
}

/** A region with long leases and enough slots that no burst runs out of capacity. */
async function seed(api: ApiClient, slots: number): Promise<void> {
  await admin(api, "PUT", `/v1/regions/${REGION}`, {
    lease: { defaultMs: LONG_LEASE_MS, maxMs: LONG_LEASE_MS },
  });
  const resources = Math.max(STATUS_RESOURCES, Math.ceil(slots / SLOTS_PER_RESOURCE));
  for (let i = 0; i < resources; i++) {
    await admin(api, "PUT", `/v1/regions/${REGION}/resources/r-${i}`, {
      slots: i * SLOTS_PER_RESOURCE < slots ? SLOTS_PER_RESOURCE : 1,
    });
  }
}

interface Grant {
  id: string;
  secret: string;
}

const claimOnce = (api: ApiClient, holder: string) =>
  api.call("POST", `/v1/regions/${REGION}/claims`, {
    token: CHAOS_TOKENS.client,
    body: { holder, leaseMs: LONG_LEASE_MS },
  });

const releaseOnce = (api: ApiClient, grant: Grant) =>
  api.call("DELETE", `/v1/claims/${grant.id}`, {
    token: CHAOS_TOKENS.client,
    headers: { "allot-claim-secret": grant.secret },
  });

/** Releases `grants` until each is answered 204 or 409, honouring Retry-After. */
async function releaseAll(api: ApiClient, grants: Grant[]): Promise<void> {
  let left = grants;
  for (let round = 0; left.length > 0; round++) {
    if (round > 100) throw new Error(`${left.length} releases never went through`);
    const outcomes = await Promise.all(left.map((g) => releaseOnce(api, g)));
    left = left.filter((_g, i) => {
      const o = outcomes[i];
      return !o.ok || (o.status !== 204 && o.status !== 409);
    });
    if (left.length > 0) await sleep(1000);
  }
}

/** `concurrency` claims at once, then the releases of the granted ones at once. */
async function burst(api: ApiClient, concurrency: number): Promise<BurstResult> {
  const claims = new Counter();
  const outcomes = await Promise.all(
    Array.from({ length: concurrency }, async (_, i) => {
      const outcome = await claimOnce(api, `burst-${concurrency}-${i}`);
      claims.add(outcome);
      return outcome;
    }),
  );
  const grants = outcomes.flatMap((o) => (o.ok && o.status === 201 ? [o.body as Grant] : []));
  const releases = new Counter();
  const answered = await Promise.all(grants.map(async (g) => {
    const outcome = await releaseOnce(api, g);
    releases.add(outcome);
    return outcome;
  }));
  await releaseAll(
    api,
    grants.filter((_g, i) => {
      const o = answered[i];
      return !o.ok || o.status !== 204;
    }),
  );
  return { concurrency, claims: claims.tally(), releases: releases.tally() };
}

/** Samples the region's backlog until `stop` resolves. */
async function sampleBacklog(
  api: ApiClient,
  stop: Promise<void>,
): Promise<{ maxPending: number; maxLagMs: number }> {
  let done = false;
  stop.then(() => (done = true));
  const max = { maxPending: 0, maxLagMs: 0 };
  while (!done) {
    const h = await regionHealth(api, REGION);
    max.maxPending = Math.max(max.maxPending, h.pending);
    max.maxLagMs = Math.max(max.maxLagMs, h.lagMs);
    await sleep(SAMPLE_MS);
  }
  return max;
}

/** `senders` loops posting status batches for `seconds`, while two callers claim and release. */
async function flood(api: ApiClient, options: OverloadOptions): Promise<FloodResult> {
  const status = new Counter();
  const claims = new Counter();
  const seqs = new Map<string, number>();
  let acceptedUpdates = 0;
  const until = Date.now() + options.floodSeconds * 1000;
  const batch = (sender: number) =>
    Array.from({ length: options.updatesPerBatch }, (_, j) => {
      const resource = `r-${(sender * options.updatesPerBatch + j) % STATUS_RESOURCES}`;
      const seq = (seqs.get(resource) ?? 0) + 1;
      seqs.set(resource, seq);
      return { resource, seq, state: "ready", load: j % 100 };
    });
  const sender = async (i: number) => {
    while (Date.now() < until) {
      const updates = batch(i);
      const outcome = await api.call("POST", `/v1/regions/${REGION}/status`, {
        token: CHAOS_TOKENS.agent,
        body: { updates },
      });
      status.add(outcome);
      if (outcome.ok && outcome.status === 202) acceptedUpdates += updates.length;
      else await sleep(50); // a hostile client: it does not wait for Retry-After
    }
  };
  const prober = async (i: number) => {
    while (Date.now() < until) {
      const outcome = await claimOnce(api, `probe-${i}`);
      claims.add(outcome);
      if (outcome.ok && outcome.status === 201) await releaseAll(api, [outcome.body]);
    }
  };
  const load = Promise.all([
    ...Array.from({ length: options.senders }, (_, i) => sender(i)),
    prober(0),
    prober(1),
  ]).then(() => {});
  const [{ maxPending, maxLagMs }] = await Promise.all([sampleBacklog(api, load), load]);
  const ended = Date.now();
  let drainSeconds: number | null = null;
  while (Date.now() - ended < DRAIN_TIMEOUT_MS) {
    if ((await regionHealth(api, REGION)).pending === 0) {
      drainSeconds = (Date.now() - ended) / 1000;
      break;
    }
    await sleep(SAMPLE_MS);
  }
  return {
    seconds: options.floodSeconds,
    senders: options.senders,
    updatesPerBatch: options.updatesPerBatch,
    status: status.tally(),
    acceptedUpdates,
    maxPending,
    maxLagMs,
    drainSeconds,
    claimsDuringFlood: claims.tally(),
  };
}

/** Runs every burst, then the flood, against a fresh server; resolves with the figures. */
export async function runOverload(
  overrides: Partial<OverloadOptions> = {},
): Promise<OverloadResult> {
  const options: OverloadOptions = { ...DEFAULT_OVERLOAD, ...overrides };
  const server = new ServerProcess();
  try {
    await server.start();
    const api = new ApiClient(server.base, 120_000);
    await seed(api, Math.max(...options.bursts));
    const bursts: BurstResult[] = [];
    for (const concurrency of options.bursts) {
      options.log?.(`burst of ${concurrency} concurrent claims, then their releases`);
      bursts.push(await burst(api, concurrency));
    }
    options.log?.(`status flood: ${options.senders} senders for ${options.floodSeconds} s`);
    const floodResult = await flood(api, options);
    const tallies = [...bursts.flatMap((b) => [b.claims, b.releases]), floodResult.status];
    const past = bursts.filter((b) => b.concurrency > MAX_QUEUED_CLAIMS);
    return {
      caps: {
        queuedClaims: MAX_QUEUED_CLAIMS,
        queuedReleases: MAX_QUEUED_ENDS,
        pendingUpdates: MAX_PENDING_UPDATES,
      },
      bursts,
      flood: floodResult,
      verdict: {
        refusedPastCap: past.every((b) => (b.claims.statuses["503 unavailable"] ?? 0) > 0) &&
          (floodResult.status.statuses["503 unavailable"] ?? 0) > 0,
        refusalsWellFormed: tallies.every((t) => t.missingRetryAfter === 0 && t.unexpected === 0),
        backlogBounded: floodResult.maxPending <=
          MAX_PENDING_UPDATES + options.senders * options.updatesPerBatch,
      },
    };
  } finally {
    await server.close();
  }
}

function formatTally(what: string, t: Tally): string {
  return `  ${what}: ${JSON.stringify(t.statuses)}${
    t.noAnswer ? `, no answer ${t.noAnswer}` : ""
  }\n` +
    `    latency (all): ${formatPercentiles(t.latency)}\n` +
    `    latency (2xx): ${formatPercentiles(t.acceptedLatency)}`;
}

function formatBurst(b: BurstResult): string {
  return `burst of ${b.concurrency} concurrent claims\n${formatTally("claims", b.claims)}\n` +
    formatTally("releases", b.releases);
}

function formatFlood(f: FloodResult): string {
  return `status flood: ${f.senders} senders × ${f.updatesPerBatch} updates for ${f.seconds} s\n` +
    `${formatTally("status", f.status)}\n` +
    `  accepted updates ${f.acceptedUpdates}, max pending ${f.maxPending}, max lag ${f.maxLagMs} ms, ` +
    `drained ${
      f.drainSeconds === null ? "not within the bound" : `${f.drainSeconds.toFixed(1)} s`
    } after\n` +
    formatTally("claims during the flood", f.claimsDuringFlood);
}

/** The figures of a run, for the terminal. */
export function formatOverload(r: OverloadResult): string {
  return [
    `caps: ${r.caps.queuedClaims} queued claims, ${r.caps.queuedReleases} queued releases, ` +
    `${r.caps.pendingUpdates} pending status updates per region`,
    ...r.bursts.map(formatBurst),
    formatFlood(r.flood),
    `verdict: ${JSON.stringify(r.verdict)}`,
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      bursts: { type: "string", default: DEFAULT_OVERLOAD.bursts.join(",") },
      "flood-seconds": { type: "string", default: String(DEFAULT_OVERLOAD.floodSeconds) },
      senders: { type: "string", default: String(DEFAULT_OVERLOAD.senders) },
    },
  });
  const result = await runOverload({
    bursts: values.bursts.split(",").map(Number),
    floodSeconds: Number(values["flood-seconds"]),
    senders: Number(values.senders),
    log: (line) => console.log(line),
  });
  console.log(formatOverload(result));
  Deno.exit(Object.values(result.verdict).every(Boolean) ? 0 : 1);
}
