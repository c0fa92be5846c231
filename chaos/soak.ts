/**
 * Soak: minutes of mixed load at a steady rate against the real server (claims, renews,
 * releases, reads, status batches), sampling the server's RSS (/proc/<pid>/status VmRSS)
 * and the region's queue lag. It reports whether memory stopped growing (the second
 * half's trend within 5 %), whether the lag stayed under its target, and the violations
 * the checker and the audits found over the whole history (there must be none). Not a CI
 * test.
 *
 *   deno task soak [--minutes=10] [--rate=100] [--holders=20] [--lag-target-ms=2000]
 */
import { parseArgs } from "node:util";
import { seededRandom } from "../lib/random.ts";
import { type ChaosViolation, regionHealth } from "./audit.ts";
import { ApiClient } from "./http.ts";
import { auditRun, type PoolShape, PRIMARY, scenarioWorkload, seedRegions } from "./scenario.ts";
import { ServerProcess, sleep } from "./server.ts";
import { formatPercentiles, median, type Percentiles, percentiles } from "./stats.ts";

/** The shape of a soak run. */
export interface SoakOptions {
  minutes: number;
  /**
   * Pace of holder operations per second, all holders together. Holders that stall on
   * purpose (waiting out a lease) and holders refused for capacity make fewer.
   */
  rate: number;
  holders: number;
  /** Seconds between samples of RSS and lag. */
  sampleSeconds: number;
  /** The lag every sample must stay under, ms. */
  lagTargetMs: number;
  /**
   * Largest allowed RSS growth over the second half of the run, by its trend (0.05: 5 %).
   * A leak keeps growing to the end; memory that steps up once and stays does not.
   */
  memoryTolerance: number;
  seed: number;
  /** Progress lines; silent when omitted. */
  log?: (line: string) => void;
}

/** One sample of the server. */
export interface SoakSample {
  /** Seconds since the load started. */
  at: number;
  rssBytes: number;
  lagMs: number;
  pending: number;
}

/** What a soak run measured and found. */
export interface SoakResult {
  minutes: number;
  operations: number;
  /** Holder and agent operations answered per second, over the whole run. */
  opsPerSecond: number;
  counts: Record<string, number>;
  samples: SoakSample[];
  memory: {
    /** Median RSS of the first and last quarter of the samples after warm-up, bytes. */
    startBytes: number;
    endBytes: number;
    /** endBytes / startBytes - 1: all growth after warm-up, a one-time step included. */
    growth: number;
    /**
     * Growth over the second half of the run by its Theil–Sen trend (the median slope of
     * every pair of samples, which a lone spike or step barely moves), over its median RSS.
     */
    tailGrowth: number;
    /** tailGrowth within the tolerance. */
    flat: boolean;
  };
  lag: { maxMs: number; targetMs: number; withinTarget: boolean };
  latency: Record<string, Percentiles>;
  violations: ChaosViolation[];
}

/** The defaults of `deno task soak`. */
export const DEFAULT_SOAK: Omit<SoakOptions, "log"> = {
  minutes: 10,
  rate: 100,
  holders: 20,
  sampleSeconds: 5,
  lagTargetMs: 2000,
  memoryTolerance: 0.05,
  seed: 1,
};

/** 30 primary resources (40 slots) and 6 backup ones (8 slots): more slots than holders. */
const SHAPE: PoolShape = { primary: 30, backup: 6 };
/** Samples taken before the process has warmed up (JIT, caches, KV pages) are left out. */
const WARM_UP_SHARE = 0.2;

/** Samples RSS and lag every `sampleSeconds` until `stopped()`. */
async function sample(
  server: ServerProcess,
  api: ApiClient,
  options: SoakOptions,
  stopped: () => boolean,
): Promise<SoakSample[]> {
  const samples: SoakSample[] = [];
  const started = Date.now();
  while (!stopped()) {
    await sleep(options.sampleSeconds * 1000);
    const [rssBytes, health] = await Promise.all([server.rssBytes(), regionHealth(api, PRIMARY)]);
    const s = {
      at: (Date.now() - started) / 1000,
      rssBytes: rssBytes ?? 0,
      lagMs: health.lagMs,
      pending: health.pending,
    };
    samples.push(s);
    options.log?.(
      `t=${s.at.toFixed(0)} s rss ${
        (s.rssBytes / 2 ** 20).toFixed(1)
      } MiB, lag ${s.lagMs} ms, pending ${s.pending}`,
    );
  }
  return samples;
}

/**
 * How RSS moved: start and end (medians of quarters, after warm-up) and the second half's
 * trend, which judges it. A leak grows for as long as the load runs, so it shows in the
 * second half however early it began; the one-time step soaks showed some minutes in, followed
 * by a plateau, does not.
 */
export function memoryTrend(samples: SoakSample[], tolerance: number): SoakResult["memory"] {
  const warm = samples.slice(Math.floor(samples.length * WARM_UP_SHARE));
  const quarter = Math.max(1, Math.floor(warm.length / 4));
  const startBytes = median(warm.slice(0, quarter).map((s) => s.rssBytes)) ?? 0;
  const endBytes = median(warm.slice(-quarter).map((s) => s.rssBytes)) ?? 0;
  const growth = startBytes > 0 ? endBytes / startBytes - 1 : 0;
  const half = samples.filter((s) => s.at >= (samples.at(-1)?.at ?? 0) / 2);
  const slopes = half.flatMap((a, i) =>
    half.slice(i + 1).filter((b) => b.at > a.at).map((b) =>
      (b.rssBytes - a.rssBytes) / (b.at - a.at)
    )
  );
  const level = median(half.map((s) => s.rssBytes)) ?? 0;
  const span = half.length > 1 ? half.at(-1)!.at - half[0].at : 0;
  const tailGrowth = level > 0 ? ((median(slopes) ?? 0) * span) / level : 0;
  return { startBytes, endBytes, growth, tailGrowth, flat: tailGrowth <= tolerance };
}

/** Runs the soak against a fresh server; resolves with the figures and violations. */
export async function runSoak(overrides: Partial<SoakOptions> = {}): Promise<SoakResult> {
  const options: SoakOptions = { ...DEFAULT_SOAK, ...overrides };
  const server = new ServerProcess();
  try {
    await server.start();
    const api = new ApiClient(server.base);
    await seedRegions(api, SHAPE);
    // Each holder paces itself so that all of them together make `rate` operations a second.
    const intervalMs = (options.holders * 1000) / options.rate;
    const workload = scenarioWorkload(api, server, SHAPE, {
      holders: options.holders,
      intervalMs: [Math.round(intervalMs * 0.5), Math.round(intervalMs * 1.5)],
      statusIntervalMs: [100, 300],
      statusUpdates: [1, SHAPE.primary],
      drainingShare: 0.05,
      random: seededRandom(options.seed),
    });
    let stopped = false;
    const load = workload.run();
    const sampling = sample(server, api, options, () => stopped);
    const started = Date.now();
    await sleep(options.minutes * 60_000);
    stopped = true;
    workload.stop();
    const [samples] = await Promise.all([sampling, load]);
    const seconds = (Date.now() - started) / 1000;
    const violations = await auditRun(api, server, workload, 60_000);
    const maxLagMs = Math.max(0, ...samples.map((s) => s.lagMs));
    return {
      minutes: options.minutes,
      operations: workload.operations,
      opsPerSecond: Math.round(workload.operations / seconds),
      counts: workload.counts,
      samples,
      memory: memoryTrend(samples, options.memoryTolerance),
      lag: {
        maxMs: maxLagMs,
        targetMs: options.lagTargetMs,
        withinTarget: maxLagMs < options.lagTargetMs,
      },
      latency: Object.fromEntries(
        Object.entries(workload.latencies).map(([what, values]) => [what, percentiles(values)]),
      ),
      violations,
    };
  } finally {
    await server.close();
  }
}

/** The figures of a run, for the terminal. */
export function formatSoak(r: SoakResult): string {
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  const pct = (share: number) => `${share >= 0 ? "+" : ""}${(share * 100).toFixed(1)} %`;
  return [
    `soak: ${r.minutes} min, ${r.operations} operations (${r.opsPerSecond}/s)`,
    `answers: ${JSON.stringify(r.counts)}`,
    ...Object.entries(r.latency).map(([what, p]) => `latency ${what}: ${formatPercentiles(p)}`),
    `memory: ${mib(r.memory.startBytes)} -> ${mib(r.memory.endBytes)} ` +
    `(${pct(r.memory.growth)} after warm-up); second half's trend ${pct(r.memory.tailGrowth)}: ` +
    `${r.memory.flat ? "stopped growing" : "STILL GROWING"}`,
    `lag: max ${r.lag.maxMs} ms against a target of ${r.lag.targetMs} ms: ` +
    `${r.lag.withinTarget ? "within" : "NOT within"}`,
    `violations: ${r.violations.length}`,
    ...r.violations.slice(0, 20).map((v) => `  ${v.kind}: ${v.message}`),
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      minutes: { type: "string", default: String(DEFAULT_SOAK.minutes) },
      rate: { type: "string", default: String(DEFAULT_SOAK.rate) },
      holders: { type: "string", default: String(DEFAULT_SOAK.holders) },
      "lag-target-ms": { type: "string", default: String(DEFAULT_SOAK.lagTargetMs) },
      seed: { type: "string", default: String(DEFAULT_SOAK.seed) },
    },
  });
  const result = await runSoak({
    minutes: Number(values.minutes),
    rate: Number(values.rate),
    holders: Number(values.holders),
    lagTargetMs: Number(values["lag-target-ms"]),
    seed: Number(values.seed),
    log: (line) => console.log(line),
  });
  console.log(formatSoak(result));
  const ok = result.memory.flat && result.lag.withinTarget && result.violations.length === 0;
  Deno.exit(ok ? 0 : 1);
}
