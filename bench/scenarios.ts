/**
 * The bench scenarios. Each starts what it measures in a subprocess, drives it, stops
 * it, and returns table rows; none runs while another does.
 */
import { runChecker } from "./checker.ts";
import { startAllot, startServer, TOKENS, withServer } from "./harness.ts";
import type { EngineResult } from "./engine.ts";
import type { KvCommitResult } from "./kv_commits.ts";
import { describeExit, type Managed, type Supervisor } from "./procs.ts";
import { type ClaimTarget, describeLoad, runWrk, wrkErrors, type WrkLoad } from "./wrk.ts";
import { putRegion, seedThroughStatus } from "./seed.ts";
import { antipatternScenario } from "./antipattern.ts";
import { pipelineScenario } from "./pipeline.ts";
import { fallbackScenario } from "./fallback.ts";
import { rssScenario } from "./rss.ts";
import { interleavedScenario } from "./interleaved.ts";
import { renewScenario } from "./renew.ts";
import { checkerRow, LEASE_MS, MAX_HOLD_MS, POOL_SIZE } from "./peers/common.ts";
import { postgresScenario } from "./peers/postgres.ts";
import { redisScenario } from "./peers/redis.ts";

/** wrk's shape for every HTTP scenario: the same generator, the same connections. */
const WRK_SHAPE = { threads: 2, connections: 64 } as const;
/** Concurrent loops of the checker and of the raw KV scenario. */
export const LOOPS = 64;

/** Durations and the supervisor every scenario gets. */
export interface BenchContext {
  sup: Supervisor;
  /** Measured wrk runs and the raw KV run. */
  seconds: number;
  checkerSeconds: number;
  /** An unmeasured wrk run before each measured one. */
  warmupSeconds: number;
}

/** One line of the results table (plus what the table leaves out, in `details`). */
export interface Row {
  scenario: string;
  what: string;
  generator: string;
  concurrency: number;
  poolSize: number | null;
  opsPerSec: number;
  unit: string;
  p50Ms: number | null;
  p99Ms: number | null;
  /** What the latency figures time. */
  latencyOf: string;
  /** Proven by the checker rows; null where nothing is allocated or nothing checks. */
  doubleAllocations: number | null;
  fencingViolations: number | null;
  errors: number;
  durable: boolean | null;
  /**
   * Which allot figure the ratio column uses: wrk loops/s, checker claims/s, the
   * interleaved rounds' loops/s, or none.
   */
  comparedWith: "wrk" | "checker" | "interleaved" | null;
  details: Record<string, unknown>;
  /** The figure as the table prints it, when `opsPerSec unit` does not say it. */
  figure?: string;
  /** The targets this row is measured against. */
  targets?: TargetCheck[];
  /** The row's line under the table, when the generic one does not fit. */
  note?: string;
  /** Double allocations are what this row demonstrates (the anti-pattern): not a failure. */
  unsafeByDesign?: boolean;
}

/** One target and whether the row met it (null: not measurable in this run). */
export interface TargetCheck {
  target: string;
  met: boolean | null;
}

/** A scenario: a name for `--only`, and the function that runs it. */
export type Scenario = (ctx: BenchContext) => Promise<Row[]>;

/** What differs between the two allocators driven by wrk and the checker. */
interface Allocator {
  name: string;
  what: string;
  durable: boolean;
  server: Managed;
  target: ClaimTarget;
}

export function wrkLoad(seconds: number): WrkLoad {
  return { ...WRK_SHAPE, seconds };
}

function assertAlive(server: Managed): void {
  if (server.exited) throw new Error(`server died under load: ${describeExit(server)}`);
}

/** Server output worth reporting: anything but Deno.serve's "Listening on" line. */
function serverOutput(server: Managed): Record<string, string> {
  const stderr = server.stderr().split("\n")
    .filter((line) => line.trim() !== "" && !line.startsWith("Listening on "))
    .join("\n");
  return stderr ? { serverStderr: stderr.slice(0, 8000) } : {};
}

/** wrk's claim loops, then the checker's recorded run, against one allocator. */
async function measureAllocator(ctx: BenchContext, a: Allocator): Promise<Row[]> {
  console.error(`  ${a.name}: wrk warm-up ${ctx.warmupSeconds}s, then ${ctx.seconds}s`);
  await runWrk(ctx.sup, a.target, wrkLoad(ctx.warmupSeconds));
  const wrk = await runWrk(ctx.sup, a.target, wrkLoad(ctx.seconds));
  assertAlive(a.server);
  console.error(`  ${a.name}: double-allocation checker, ${LOOPS} workers, ${ctx.checkerSeconds}s`);
  const run = await runChecker(a.target, {
    workers: LOOPS,
    seconds: ctx.checkerSeconds,
    maxHoldMs: MAX_HOLD_MS,
  });
  assertAlive(a.server);
  return [
    {
      scenario: a.name,
      what: `${a.what}: claim → release over HTTP`,
      generator: `${describeLoad(wrkLoad(ctx.seconds))}, claim_release.lua`,
      concurrency: WRK_SHAPE.connections,
      poolSize: POOL_SIZE,
      opsPerSec: wrk.releases / wrk.seconds,
      unit: "claim loops/s",
      p50Ms: wrk.latencyMs.p50,
      p99Ms: wrk.latencyMs.p99,
      latencyOf: "every request (claims and releases), as wrk reports it",
      doubleAllocations: null,
      fencingViolations: null,
      errors: wrkErrors(wrk, [201, 204]),
      durable: a.durable,
      comparedWith: "wrk",
      details: {
        ...wrk,
        claimsPerSec: wrk.claims / wrk.seconds,
        requestsPerSec: wrk.requests / wrk.seconds,
        unavailable503: wrk.statuses["503"] ?? 0,
      },
    },
    checkerRow(
      {
        scenario: `${a.name}-checker`,
        what: a.what,
        generator: "Deno fetch",
        durable: a.durable,
      },
      run,
      serverOutput(a.server),
      { ok: ["201", "204"], latencyOf: "claims only (sent → 201 body read)" },
    ),
  ];
}

async function regionHealth(baseUrl: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${baseUrl}/v1/regions/bench`, {
    headers: { authorization: `Bearer ${TOKENS.admin}` },
  });
  if (!res.ok) throw new Error(`GET /v1/regions/bench: ${res.status} ${await res.text()}`);
  const { total, free, claimed, mode, pending } = await res.json();
  return { total, free, claimed, mode, pending };
}

/** Region `bench` with LEASE_MS leases and POOL_SIZE single-slot resources, via status batches. */
export async function seedAllot(baseUrl: string): Promise<void> {
  const admin = { baseUrl, token: TOKENS.admin };
  await putRegion(admin, "bench", { lease: { defaultMs: LEASE_MS, maxMs: LEASE_MS } });
  await seedThroughStatus(admin, "bench", POOL_SIZE);
  const health = await regionHealth(baseUrl);
  if (health.total !== POOL_SIZE || health.free !== POOL_SIZE) {
    throw new Error(`seeded pool is not ${POOL_SIZE} free slots: ${JSON.stringify(health)}`);
  }
}

/** Runs one of bench/engine_server.ts's bench routes, as the admin, and returns its result. */
export async function runBenchRoute<T>(
  baseUrl: string,
  path: "/bench/engine" | "/bench/renew",
  body: Record<string, unknown>,
): Promise<T> {
  const res = await fetch(`${baseUrl}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${TOKENS.admin}` },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`POST ${path}: ${res.status} ${await res.text()}`);
  return await res.json() as T;
}

/** Runs the claim engine of a bench/engine_server.ts for `seconds`, without HTTP per claim. */
export function runEngine(baseUrl: string, seconds: number): Promise<EngineResult> {
  return runBenchRoute(baseUrl, "/bench/engine", { seconds, loops: LOOPS });
}

/** Where wrk and the checker send allot's claims and releases. */
export function allotTarget(baseUrl: string): ClaimTarget {
  return {
    baseUrl,
    claimPath: "/v1/regions/bench/claims",
    releasePrefix: "/v1/claims/",
    token: TOKENS.client,
  };
}

/** The SQLite anchor's server on a fresh pool file. */
export async function startSqliteServer(ctx: BenchContext, name: string) {
  const dir = await ctx.sup.tempDir(`${name}-`);
  return await startServer(ctx, name, "bench/sqlite_server.ts", {
    SQLITE_PATH: `${dir}/pool.sqlite`,
    POOL_SIZE: String(POOL_SIZE),
  });
}

/** Where wrk and the checker send the SQLite anchor's claims and releases. */
export function sqliteTarget(baseUrl: string): ClaimTarget {
  return { baseUrl, claimPath: "/claim", releasePrefix: "/claim/", token: "unused" };
}

/** LOOPS raw CAS loops on a fresh file-backed KV for `seconds`, in a subprocess. */
export async function runKvCommits(ctx: BenchContext, seconds: number): Promise<KvCommitResult> {
  const dir = await ctx.sup.tempDir("kv-");
  const proc = ctx.sup.spawn("kv commits", Deno.execPath(), [
    "run",
    "-A",
    "bench/kv_commits.ts",
    `${dir}/raw.kv`,
    String(seconds),
    String(LOOPS),
  ]);
  const status = await proc.done;
  if (!status.success) throw new Error(describeExit(proc));
  return JSON.parse(proc.stdout().trim().split("\n").at(-1)!);
}

export const SQLITE_WHAT = "SQLite anchor (WAL, synchronous=FULL, Hono)";

/** Scenario 1: the real allot server (main.ts) on a file-backed KV. */
async function allotScenario(ctx: BenchContext): Promise<Row[]> {
  const { server, baseUrl } = await startAllot(ctx, "allot", "main.ts");
  return await withServer(ctx, server, async () => {
    const seeded = performance.now();
    console.error(`  allot: seeding ${POOL_SIZE} resources through status batches`);
    await seedAllot(baseUrl);
    const seedSeconds = (performance.now() - seeded) / 1000;
    const rows = await measureAllocator(ctx, {
      name: "allot",
      what: "allot (main.ts, file-backed Deno KV)",
      durable: true,
      server,
      target: allotTarget(baseUrl),
    });
    rows[0].details.seedSeconds = seedSeconds;
    rows[1].details.regionAfter = await regionHealth(baseUrl);
    return rows;
  });
}

/** Scenario 2: raw compare-and-swap commits on a file-backed KV, in a subprocess. */
async function kvScenario(ctx: BenchContext): Promise<Row[]> {
  console.error(`  kv: ${LOOPS} CAS loops for ${ctx.seconds}s`);
  const result = await runKvCommits(ctx, ctx.seconds);
  return [{
    scenario: "kv-raw",
    what: `raw Deno KV: check(versionstamp).set(key).commit() on ${LOOPS} distinct keys`,
    generator: `${LOOPS} async loops in one Deno process`,
    concurrency: LOOPS,
    poolSize: null,
    opsPerSec: result.commits / result.seconds,
    unit: "commits/s",
    p50Ms: result.p50Ms,
    p99Ms: result.p99Ms,
    latencyOf: "each commit",
    doubleAllocations: null,
    fencingViolations: null,
    errors: result.conflicts,
    durable: true,
    comparedWith: "wrk",
    details: { ...result },
  }];
}

/** Scenario 3: the SQLite anchor served like allot, driven like allot. */
async function sqliteScenario(ctx: BenchContext): Promise<Row[]> {
  const { server, baseUrl } = await startSqliteServer(ctx, "sqlite");
  return await withServer(ctx, server, () =>
    measureAllocator(ctx, {
      name: "sqlite",
      what: SQLITE_WHAT,
      durable: true,
      server,
      target: sqliteTarget(baseUrl),
    }));
}

/** Scenario 4: the ceiling, a trivial Hono POST endpoint driven by the same wrk script. */
async function honoScenario(ctx: BenchContext): Promise<Row[]> {
  const { server, baseUrl } = await startServer(ctx, "hono", "bench/hono_server.ts", {});
  return await withServer(ctx, server, async () => {
    const target = { baseUrl, claimPath: "/echo", releasePrefix: "/unused/", token: "unused" };
    console.error(`  hono: wrk warm-up ${ctx.warmupSeconds}s, then ${ctx.seconds}s`);
    await runWrk(ctx.sup, target, wrkLoad(ctx.warmupSeconds));
    const wrk = await runWrk(ctx.sup, target, wrkLoad(ctx.seconds));
    assertAlive(server);
    return [{
      scenario: "hono-ceiling",
      what: "trivial Hono POST endpoint (JSON in, JSON out, no storage)",
      generator: `${describeLoad(wrkLoad(ctx.seconds))}, claim_release.lua`,
      concurrency: WRK_SHAPE.connections,
      poolSize: null,
      opsPerSec: (wrk.statuses["200"] ?? 0) / wrk.seconds,
      unit: "requests/s",
      p50Ms: wrk.latencyMs.p50,
      p99Ms: wrk.latencyMs.p99,
      latencyOf: "every request, as wrk reports it",
      doubleAllocations: null,
      fencingViolations: null,
      errors: wrkErrors(wrk, [200]),
      durable: null,
      comparedWith: "wrk",
      details: { ...wrk },
    }];
  });
}

/** Every scenario, in run order, by its `--only` name. */
export const SCENARIOS: Record<string, Scenario> = {
  allot: allotScenario,
  kv: kvScenario,
  sqlite: sqliteScenario,
  hono: honoScenario,
  interleaved: interleavedScenario,
  renew: renewScenario,
  antipattern: antipatternScenario,
  pipeline: pipelineScenario,
  fallback: fallbackScenario,
  rss: rssScenario,
  postgres: postgresScenario,
  redis: redisScenario,
};
