/**
 * Peer: PostgreSQL with `FOR UPDATE SKIP LOCKED` (what pg-boss, River and Graphile Worker
 * do). The run starts its own server (initdb, then the postmaster in the foreground as a
 * child of the run, as the `postgres` user when the run is root) in a temp dir on a
 * loopback port with durable defaults (fsync on, synchronous_commit=on), and stops it by
 * its pid. Measured with pgbench and bench/pgbench_claim.sql; judged by bench/checker.ts
 * over a separate recorded run (bench/peers/pg_record.ts).
 */
import type { CheckerRun } from "../checker.ts";
import { commandOutput, describeExit, freePort, type Managed, REPO_ROOT } from "../procs.ts";
import type { BenchContext, Row } from "../scenarios.ts";
import { percentile } from "../stats.ts";
import {
  checkerRow,
  CONNECTIONS,
  count,
  type CpuUse,
  describeCpu,
  describeGeneratorCpu,
  exists,
  findOrInstall,
  isRoot,
  MAX_HOLD_MS,
  POOL_SIZE,
  resultLine,
  secondarySeconds,
  stopServer,
  waitUntil,
  withCpu,
} from "./common.ts";

const SCRIPT = `${REPO_ROOT}bench/pgbench_claim.sql`;
const PGBENCH_THREADS = 2;
const RECORDER = "npm:postgres@3.4.9";

/** Where Debian puts a PostgreSQL version's programs. */
interface PgBin {
  dir: string;
  version: string;
}

/** The newest /usr/lib/postgresql/<major>/bin with initdb, postgres, pgbench, psql. */
async function findPostgres(): Promise<PgBin | null> {
  const majors: number[] = [];
  try {
    for await (const entry of Deno.readDir("/usr/lib/postgresql")) {
      if (/^\d+$/.test(entry.name)) majors.push(Number(entry.name));
    }
  } catch {
    return null;
  }
  for (const major of majors.sort((a, b) => b - a)) {
    const dir = `/usr/lib/postgresql/${major}/bin`;
    const tools = ["initdb", "postgres", "pgbench", "psql", "pg_isready"];
    const present = await Promise.all(tools.map((tool) => exists(`${dir}/${tool}`)));
    if (present.every(Boolean)) return { dir, version: String(major) };
  }
  return null;
}

/** A started server and how to reach it. */
interface PgServer {
  bin: PgBin;
  server: Managed;
  port: number;
  /** server_version: "15.18 (Debian 15.18-0+deb12u1)" */
  version: string;
}

function connectArgs(pg: PgServer): string[] {
  return ["-h", "127.0.0.1", "-p", String(pg.port), "-U", "postgres"];
}

/** Runs SQL statements with psql (each -c in its own transaction); fails on the first error. */
async function psql(ctx: BenchContext, pg: PgServer, ...statements: string[]): Promise<string> {
  const proc = ctx.sup.spawn("psql", `${pg.bin.dir}/psql`, [
    ...connectArgs(pg),
    "-X",
    "-q",
    "-A",
    "-t",
    "-v",
    "ON_ERROR_STOP=1",
    "-d",
    "postgres",
    ...statements.flatMap((sql) => ["-c", sql]),
  ]);
  const status = await proc.done;
  if (!status.success) throw new Error(`psql failed: ${describeExit(proc)}`);
  return proc.stdout().trim();
}

/** initdb in a temp dir, then the postmaster as a child of the run. */
async function startPostgres(ctx: BenchContext, bin: PgBin): Promise<PgServer> {
  const dir = await ctx.sup.tempDir("postgres-");
  let asOwner: string[] = [];
  if (await isRoot(ctx.sup)) {
    // PostgreSQL refuses to run as root: the data dir belongs to the postgres user.
    const uid = Number(await commandOutput(ctx.sup, "id", ["-u", "postgres"]));
    const gid = Number(await commandOutput(ctx.sup, "id", ["-g", "postgres"]));
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) {
      throw new Error("running as root, but there is no postgres user to run PostgreSQL as");
    }
    await Deno.chown(dir, uid, gid);
    asOwner = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"];
  }
  const data = `${dir}/data`;
  const [initCmd, ...initArgs] = [
    ...asOwner,
    `${bin.dir}/initdb`,
    "-D",
    data,
    "-A",
    "trust",
    "-U",
    "postgres",
    "-E",
    "UTF8",
    "--locale=C",
  ];
  const initdb = ctx.sup.spawn("initdb", initCmd, initArgs);
  if (!(await initdb.done).success) throw new Error(`initdb failed: ${describeExit(initdb)}`);
  const port = freePort();
  const [cmd, ...args] = [
    ...asOwner,
    `${bin.dir}/postgres`,
    "-D",
    data,
    "-p",
    String(port),
    "-c",
    "listen_addresses=127.0.0.1",
    "-c",
    "unix_socket_directories=",
    // Durable defaults, spelt out: every commit waits for its WAL flush.
    "-c",
    "fsync=on",
    "-c",
    "synchronous_commit=on",
    "-c",
    "full_page_writes=on",
  ];
  const server = ctx.sup.spawn("postgres", cmd, args);
  const pg: PgServer = { bin, server, port, version: "" };
  try {
    await waitUntil("postgres", server, async () => {
      const ready = ctx.sup.spawn("pg_isready", `${bin.dir}/pg_isready`, connectArgs(pg));
      return (await ready.done).success;
    });
    pg.version = await psql(ctx, pg, "SHOW server_version");
  } catch (error) {
    await stopServer(ctx.sup, server, "SIGINT");
    throw error;
  }
  return pg;
}

/** The pool: POOL_SIZE free rows, a partial index on free rows, a fencing sequence. */
async function createPool(ctx: BenchContext, pg: PgServer): Promise<void> {
  await psql(
    ctx,
    pg,
    "CREATE TABLE pool (id integer PRIMARY KEY, holder text, fencing bigint)",
    "CREATE INDEX pool_free ON pool (id) WHERE holder IS NULL",
    "CREATE SEQUENCE fence",
    `INSERT INTO pool (id) SELECT g FROM generate_series(1, ${POOL_SIZE}) AS g`,
    "VACUUM ANALYZE pool",
  );
}

/** Frees what a stopped run left claimed and vacuums, so every run starts alike. */
async function resetPool(ctx: BenchContext, pg: PgServer): Promise<void> {
  const held = await psql(
    ctx,
    pg,
    "UPDATE pool SET holder = NULL WHERE holder IS NOT NULL",
    "VACUUM ANALYZE pool",
    "SELECT count(*) FROM pool WHERE holder IS NULL",
  );
  if (Number(held.split("\n").at(-1)) !== POOL_SIZE) {
    throw new Error(`pool is not ${POOL_SIZE} free rows after a reset: ${held}`);
  }
}

/** What one pgbench run measured. */
interface PgbenchResult {
  seconds: number;
  /** Transactions (statements: claims and releases alternate). */
  transactions: number;
  claims: number;
  releases: number;
  loopsPerSec: number;
  statementsPerSec: number;
  claimMs: { p50: number | null; p99: number | null };
  releaseMs: { p50: number | null; p99: number | null };
  allMs: { p50: number | null; p99: number | null };
  /** pgbench -r: average latency of each statement, as it prints them. */
  statementAveragesMs: Record<string, number>;
  failedTransactions: number;
  abortedClients: number;
}

function latencies(values: number[]) {
  return { p50: percentile(values, 50), p99: percentile(values, 99) };
}

/** Reads pgbench's per-transaction logs: "client_id transaction_no time script_no …". */
async function readLogs(dir: string, prefix: string) {
  const claims: number[] = [];
  const releases: number[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.name.startsWith(prefix)) continue;
    const text = await Deno.readTextFile(`${dir}/${entry.name}`);
    for (const line of text.split("\n")) {
      if (line === "") continue;
      const [, transaction, micros] = line.split(" ");
      // A client's transactions count from 1: odd ones claim, even ones release.
      (Number(transaction) % 2 === 1 ? claims : releases).push(Number(micros) / 1000);
    }
    await Deno.remove(`${dir}/${entry.name}`);
  }
  return { claims, releases };
}

/** One pgbench run of bench/pgbench_claim.sql: 64 clients, prepared statements. */
async function runPgbench(
  ctx: BenchContext,
  pg: PgServer,
  seconds: number,
  env: Record<string, string>,
): Promise<PgbenchResult> {
  const logDir = await ctx.sup.tempDir("pgbench-");
  const prefix = "pgbench_log";
  const proc = ctx.sup.spawn("pgbench", `${pg.bin.dir}/pgbench`, [
    ...connectArgs(pg),
    "-n",
    "-M",
    "prepared",
    "-c",
    String(CONNECTIONS),
    "-j",
    String(PGBENCH_THREADS),
    "-T",
    String(seconds),
    "-D",
    "held=0",
    "-f",
    SCRIPT,
    "-r",
    "--log",
    `--log-prefix=${logDir}/${prefix}`,
    "postgres",
  ], env);
  const status = await proc.done;
  const out = proc.stdout();
  const aborted = (proc.stderr().match(/aborted in command/g) ?? []).length;
  const tps = Number(out.match(/^tps = ([\d.]+) \(without initial connection time\)/m)?.[1]);
  const processed = Number(out.match(/^number of transactions actually processed: (\d+)/m)?.[1]);
  if (!status.success || !Number.isFinite(tps) || !Number.isFinite(processed) || tps <= 0) {
    throw new Error(`pgbench failed: ${describeExit(proc)}\nstdout:\n${out}`);
  }
  const averages: Record<string, number> = {};
  for (const match of out.matchAll(/^\s+([\d.]+)\s+\d+\s+(UPDATE pool SET holder = \S+)/gm)) {
    averages[match[2].includes("NULL") ? "release" : "claim"] = Number(match[1]);
  }
  const logs = await readLogs(logDir, prefix);
  const measured = processed / tps;
  return {
    seconds: measured,
    transactions: processed,
    claims: logs.claims.length,
    releases: logs.releases.length,
    loopsPerSec: logs.releases.length / measured,
    statementsPerSec: tps,
    claimMs: latencies(logs.claims),
    releaseMs: latencies(logs.releases),
    allMs: latencies([...logs.claims, ...logs.releases]),
    statementAveragesMs: averages,
    failedTransactions: Number(out.match(/^number of failed transactions: (\d+)/m)?.[1] ?? 0),
    abortedClients: aborted,
  };
}

/** Warm-up, reset, measured pgbench run with its CPU use. */
async function measure(
  ctx: BenchContext,
  pg: PgServer,
  label: string,
  seconds: number,
  env: Record<string, string>,
): Promise<{ result: PgbenchResult; cpu: CpuUse | null }> {
  console.error(`  ${label}: pgbench warm-up ${ctx.warmupSeconds}s, then ${seconds}s`);
  await resetPool(ctx, pg);
  await runPgbench(ctx, pg, ctx.warmupSeconds, env);
  await resetPool(ctx, pg);
  return await withCpu(ctx.sup, pg.server, () => runPgbench(ctx, pg, seconds, env));
}

function pgbenchRow(
  pg: PgServer,
  scenario: string,
  settings: string,
  durable: boolean,
  { result, cpu }: { result: PgbenchResult; cpu: CpuUse | null },
): Row {
  const generator = `pgbench -M prepared -c${CONNECTIONS} -j${PGBENCH_THREADS}, ` +
    `pgbench_claim.sql (${describeGeneratorCpu(cpu)})`;
  const avg = result.statementAveragesMs;
  return {
    scenario,
    what: `PostgreSQL ${pg.version.split(" ")[0]} (${settings}): SKIP LOCKED claim → release`,
    generator,
    concurrency: CONNECTIONS,
    poolSize: POOL_SIZE,
    opsPerSec: result.loopsPerSec,
    unit: "claim loops/s",
    p50Ms: result.claimMs.p50,
    p99Ms: result.claimMs.p99,
    latencyOf: "claims only, each its own transaction (pgbench --log)",
    doubleAllocations: null,
    fencingViolations: null,
    errors: result.failedTransactions + result.abortedClients,
    durable,
    comparedWith: "wrk",
    details: {
      ...result,
      cpu,
      serverVersion: pg.version,
    },
    note: `${count.format(result.statementsPerSec)} statements/s (claims and releases, one ` +
      `transaction each); all statements p50/p99 ${result.allMs.p50?.toFixed(2)}/` +
      `${result.allMs.p99?.toFixed(2)} ms; pgbench -r averages: claim ${avg.claim} ms, ` +
      `release ${avg.release} ms; ${result.failedTransactions} failed transactions, ` +
      `${result.abortedClients} aborted clients; ${describeCpu(cpu)}; p50/p99 time claims ` +
      `only, each its own transaction (pgbench --log).`,
  };
}

/** The recording run: 64 npm:postgres connections, history judged by the checker. */
async function record(ctx: BenchContext, pg: PgServer): Promise<Row> {
  console.error(
    `  postgres: double-allocation checker (${RECORDER}), ${CONNECTIONS} connections, ` +
      `${ctx.checkerSeconds}s`,
  );
  await resetPool(ctx, pg);
  const dir = await ctx.sup.tempDir("pg-record-");
  const out = `${dir}/history.json`;
  const proc = ctx.sup.spawn("pg recorder", Deno.execPath(), [
    "run",
    "-A",
    "bench/peers/pg_record.ts",
    `postgres://postgres@127.0.0.1:${pg.port}/postgres`,
    String(ctx.checkerSeconds),
    String(CONNECTIONS),
    String(MAX_HOLD_MS),
    out,
  ]);
  const status = await proc.done;
  if (!status.success) throw new Error(`recorder failed: ${describeExit(proc)}`);
  resultLine(proc);
  const run: CheckerRun = JSON.parse(await Deno.readTextFile(out));
  await Deno.remove(out);
  return checkerRow(
    {
      scenario: "postgres-checker",
      what: `PostgreSQL ${pg.version.split(" ")[0]} (fsync on, synchronous_commit=on)`,
      generator: `Deno ${RECORDER}, ${CONNECTIONS} connections`,
      durable: true,
    },
    run,
  );
}

/** The PostgreSQL peer: durable pgbench run, recorded checker run, synchronous_commit=off run. */
export async function postgresScenario(ctx: BenchContext): Promise<Row[]> {
  const bin = await findOrInstall(ctx.sup, {
    name: "postgres",
    label: "PostgreSQL",
    aptPackage: "postgresql",
  }, findPostgres);
  if (bin === null) return [];
  console.error(`  postgres: initdb and start (${bin.dir})`);
  const pg = await startPostgres(ctx, bin);
  try {
    await createPool(ctx, pg);
    const durable = await measure(ctx, pg, "postgres", ctx.seconds, {});
    const checker = await record(ctx, pg);
    const asyncSeconds = secondarySeconds(ctx.seconds);
    const async = await measure(ctx, pg, "postgres synchronous_commit=off", asyncSeconds, {
      PGOPTIONS: "-c synchronous_commit=off",
    });
    if (pg.server.exited) throw new Error(`postgres died: ${describeExit(pg.server)}`);
    return [
      pgbenchRow(pg, "postgres", "fsync on, synchronous_commit=on", true, durable),
      checker,
      pgbenchRow(pg, "postgres-async", "synchronous_commit=off: not durable", false, async),
    ];
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`${message}\n${describeExit(pg.server)}`, { cause: error });
  } finally {
    await stopServer(ctx.sup, pg.server, "SIGINT"); // fast shutdown
  }
}
