/**
 * Crash and restart: the real server on a file-backed KV under concurrent claims, renews,
 * releases and status batches over HTTP, killed with SIGKILL at random moments and
 * restarted on the same KV file, again and again. Afterwards an independent checker
 * (tests/_checker.ts) reads the history of acknowledged answers for double allocation,
 * fencing order and resurrected leases, and the audits check that nothing acknowledged
 * was lost, no lease stuck, and every index, counter and watermark agrees.
 *
 *   deno task chaos [--crashes=30] [--seconds=120] [--holders=24] [--seed=N] [--keep-kv=path]
 */
import { parseArgs } from "node:util";
import { seededRandom } from "../lib/random.ts";
import type { ChaosViolation } from "./audit.ts";
import { ApiClient } from "./http.ts";
import { auditRun, type PoolShape, PRIMARY, scenarioWorkload, seedRegions } from "./scenario.ts";
import { CHAOS_TOKENS, ServerProcess, sleep } from "./server.ts";

/** The shape of a chaos run. */
export interface ChaosOptions {
  /** SIGKILLs (each followed by a restart). */
  crashes: number;
  /** Length of the load, in seconds (longer if the crashes need it). */
  seconds: number;
  /** Concurrent claim holders. */
  holders: number;
  /** Seed of the callers' choices and of the crash moments. */
  seed: number;
  /** How long each audit waits for the queue to drain or the pools to come back, ms. */
  settleMs: number;
  /** Where the server keeps its KV file, kept after the run (default: a temp dir, removed). */
  kvPath?: string;
  /** Progress lines; silent when omitted. */
  log?: (line: string) => void;
}

/** What a chaos run did and found. */
export interface ChaosResult {
  seed: number;
  seconds: number;
  /** Answered requests, whatever their status. */
  operations: number;
  /** Answers by operation and status. */
  counts: Record<string, number>;
  crashes: number;
  /** Restarts after a crash that served again. */
  crashesSurvived: number;
  grants: number;
  releases: number;
  /** Status batches answered 202. */
  statusBatches: number;
  /** Grants whose first answer was lost and came from an idempotent replay. */
  replays: number;
  /** Grants served by the backup region (fallback). */
  servedByBackup: number;
  /** The primary's highest status lag and backlog sampled during the load. */
  maxLagMs: number;
  maxPending: number;
  historyEvents: number;
  violations: ChaosViolation[];
}

/** The defaults of `deno task chaos` (the CI test asks for fewer crashes and seconds). */
export const DEFAULT_CHAOS: Omit<ChaosOptions, "log"> = {
  crashes: 30,
  seconds: 120,
  holders: 24,
  seed: 1,
  settleMs: 90_000,
};

/** 10 primary resources (14 slots) and 4 backup ones (6 slots): fewer than the holders. */
const SHAPE: PoolShape = { primary: 10, backup: 4 };

/**
 * Deno KV's local queue marks a delivered message as running with a deadline about 5 s
 * ahead; after a kill, the next process requeues it at start-up only if that deadline has
 * passed, else at its periodic clean-up, about 60 s later. So the last crash of a run
 * restarts slowly: every message in flight at any kill is then redelivered at once, and
 * the audits do not wait on the clean-up. The other crashes restart at once.
 */
const SLOW_RESTART_MS = 6000;

/** Samples the primary's lag and backlog every 500 ms until `stopped()`, pausing through restarts. */
async function sampleLag(
  api: ApiClient,
  server: ServerProcess,
  stopped: () => boolean,
): Promise<{ maxLagMs: number; maxPending: number }> {
  const max = { maxLagMs: 0, maxPending: 0 };
  while (!stopped()) {
    await server.whenUp();
    const res = await api.call("GET", `/v1/regions/${PRIMARY}`, { token: CHAOS_TOKENS.admin });
    if (res.ok && res.status === 200) {
      max.maxLagMs = Math.max(max.maxLagMs, res.body.lagMs);
      max.maxPending = Math.max(max.maxPending, res.body.pending);
    }
    await sleep(500);
  }
  return max;
}

/** Kills and restarts the server `crashes` times, at random moments spread over `seconds`. */
async function crashLoop(
  server: ServerProcess,
  options: ChaosOptions,
  random: () => number,
): Promise<void> {
  const meanUpMs = (options.seconds * 1000) / (options.crashes + 1);
  for (let i = 0; i < options.crashes; i++) {
    await sleep(meanUpMs * (0.2 + 1.6 * random()));
    await server.kill();
    await sleep(i === options.crashes - 1 ? SLOW_RESTART_MS : 300 * random());
    await server.start();
    options.log?.(`crash ${i + 1}/${options.crashes}: killed and restarted (pid ${server.pid})`);
  }
}

/** Runs the load, the crashes, and every audit; resolves with the figures and violations. */
export async function runChaos(overrides: Partial<ChaosOptions> = {}): Promise<ChaosResult> {
  const options: ChaosOptions = { ...DEFAULT_CHAOS, ...overrides };
  // The crash moments replay from the seed; the callers' choices too, though the server's
  // interleavings (and so the answers they act on) need not repeat exactly.
  const random = seededRandom(options.seed);
  const crashRandom = seededRandom(options.seed ^ 0x9e3779b9);
  const server = new ServerProcess({ kvPath: options.kvPath });
  const started = Date.now();
  try {
    await server.start();
    const api = new ApiClient(server.base);
    await seedRegions(api, SHAPE);
    const workload = scenarioWorkload(api, server, SHAPE, {
      holders: options.holders,
      intervalMs: [0, 40],
      statusIntervalMs: [20, 120],
      statusUpdates: [1, SHAPE.primary],
      drainingShare: 0.1,
      random,
    });
    const load = workload.run();
    let stopped = false;
    const lag = sampleLag(api, server, () => stopped);
    await crashLoop(server, options, crashRandom);
    await sleep(Math.max(500, started + options.seconds * 1000 - Date.now()));
    workload.stop();
    stopped = true;
    const [{ maxLagMs, maxPending }] = await Promise.all([lag, load]);
    const seconds = (Date.now() - started) / 1000;
    options.log?.(`load stopped after ${seconds.toFixed(1)} s; auditing`);
    const violations = await auditRun(api, server, workload, options.settleMs);
    return {
      seed: options.seed,
      seconds,
      operations: workload.operations,
      counts: workload.counts,
      crashes: server.kills,
      crashesSurvived: server.starts - 1,
      grants: workload.grants.size,
      releases: workload.released.size,
      statusBatches: workload.counts["status 202"] ?? 0,
      replays: workload.replays,
      servedByBackup: workload.servedByBackup,
      maxLagMs,
      maxPending,
      historyEvents: workload.history.events.length,
      violations,
    };
  } finally {
    await server.close();
  }
}

/** The figures of a run, one line each. */
export function formatChaos(result: ChaosResult): string {
  const counts = Object.entries(result.counts).sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([key, n]) => `${key}: ${n}`).join(", ");
  return [
    `chaos: seed ${result.seed}, ${result.seconds.toFixed(1)} s`,
    `operations: ${result.operations} (${counts})`,
    `crashes survived: ${result.crashesSurvived}/${result.crashes}`,
    `grants: ${result.grants} (replayed after a lost answer: ${result.replays}, ` +
    `served by the backup: ${result.servedByBackup}), releases: ${result.releases}, ` +
    `status batches: ${result.statusBatches}, history events: ${result.historyEvents}`,
    `status lag during the load: max ${result.maxLagMs} ms, backlog up to ${result.maxPending} updates`,
    `violations: ${result.violations.length}`,
    ...result.violations.slice(0, 20).map((v) => `  ${v.kind}: ${v.message}`),
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      crashes: { type: "string", default: String(DEFAULT_CHAOS.crashes) },
      seconds: { type: "string", default: String(DEFAULT_CHAOS.seconds) },
      holders: { type: "string", default: String(DEFAULT_CHAOS.holders) },
      seed: { type: "string", default: String(Date.now() % 2 ** 31) },
      "keep-kv": { type: "string" },
    },
  });
  const result = await runChaos({
    crashes: Number(values.crashes),
    seconds: Number(values.seconds),
    holders: Number(values.holders),
    seed: Number(values.seed),
    kvPath: values["keep-kv"],
    log: (line) => console.log(line),
  });
  console.log(formatChaos(result));
  Deno.exit(result.violations.length === 0 ? 0 : 1);
}
