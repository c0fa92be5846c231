/**
 * Peer: Redis as a semaphore. The run starts its own redis-server (Debian's) in a temp
 * dir on a loopback port, with `appendonly yes` and `appendfsync always` (each write is
 * fsynced before its reply), then again with `appendfsync everysec` (not durable), and
 * stops it by its pid. The pool is a set of free ids; a claim is one Lua script (SPOP,
 * HSET holder, INCR fencing token), a release another (checks the holder, HDEL, SADD).
 * Driven by bench/peers/redis_client.ts (a lean RESP client, no pipelining) and judged
 * by bench/checker.ts over a separate recorded run.
 */
import type { CheckerRun } from "../checker.ts";
import { describeExit, freePort, type Managed } from "../procs.ts";
import type { BenchContext, Row } from "../scenarios.ts";
import {
  checkerRow,
  CONNECTIONS,
  count,
  type CpuUse,
  describeCpu,
  describeGeneratorCpu,
  exists,
  findOrInstall,
  MAX_HOLD_MS,
  POOL_SIZE,
  resultLine,
  secondarySeconds,
  stopServer,
  waitUntil,
  withCpu,
} from "./common.ts";
import type { RedisLoadResult } from "./redis_client.ts";
import { CLAIM_LUA, KEYS, RELEASE_LUA, RespConnection } from "./resp.ts";

const REDIS_SERVER = "/usr/bin/redis-server";
const CLIENT = "Deno RESP client (bench/peers/resp.ts)";
/** Ids per SADD while filling the pool. */
const FILL_CHUNK = 1000;

/** A started server, a control connection to it, and the loaded scripts. */
interface RedisServer {
  server: Managed;
  port: number;
  control: RespConnection;
  version: string;
  claimSha: string;
  releaseSha: string;
}

async function findRedis(): Promise<string | null> {
  return await exists(REDIS_SERVER) ? REDIS_SERVER : null;
}

async function startRedis(ctx: BenchContext): Promise<RedisServer> {
  const dir = await ctx.sup.tempDir("redis-");
  const port = freePort();
  const server = ctx.sup.spawn("redis-server", REDIS_SERVER, [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--dir",
    dir,
    "--daemonize",
    "no",
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
    "--logfile",
    "",
  ]);
  let control: RespConnection | null = null;
  try {
    await waitUntil("redis-server", server, async () => {
      (control as RespConnection | null)?.close();
      control = await RespConnection.connect(port);
      return (await control.call("PING")) === "PONG";
    });
    const conn = control!;
    const info = String(await conn.call("INFO", "server"));
    return {
      server,
      port,
      control: conn,
      version: info.match(/^redis_version:(\S+)/m)?.[1] ?? "?",
      claimSha: String(await conn.call("SCRIPT", "LOAD", CLAIM_LUA)),
      releaseSha: String(await conn.call("SCRIPT", "LOAD", RELEASE_LUA)),
    };
  } catch (error) {
    (control as RespConnection | null)?.close();
    await stopServer(ctx.sup, server, "SIGTERM");
    throw error;
  }
}

/** POOL_SIZE free ids, nothing held, the fencing counter at 0. */
async function fillPool(redis: RedisServer): Promise<void> {
  await redis.control.call("DEL", KEYS.free, KEYS.held, KEYS.fence);
  for (let from = 1; from <= POOL_SIZE; from += FILL_CHUNK) {
    const ids = Array.from(
      { length: Math.min(FILL_CHUNK, POOL_SIZE - from + 1) },
      (_, i) => String(from + i),
    );
    await redis.control.call("SADD", KEYS.free, ...ids);
  }
  await checkPool(redis);
}

/** Every loop ends with a release, so after a run the pool must be whole again. */
async function checkPool(redis: RedisServer): Promise<void> {
  const free = await redis.control.call("SCARD", KEYS.free);
  const held = await redis.control.call("HLEN", KEYS.held);
  if (free !== POOL_SIZE || held !== 0) {
    throw new Error(`pool is not whole: ${free} free ids, ${held} held (want ${POOL_SIZE}, 0)`);
  }
}

/** Starts the client in `mode` and waits for it. */
async function runClient(
  ctx: BenchContext,
  redis: RedisServer,
  mode: "load" | "record",
  seconds: number,
  extra: string[] = [],
): Promise<Managed> {
  const proc = ctx.sup.spawn(`redis ${mode} client`, Deno.execPath(), [
    "run",
    "-A",
    "bench/peers/redis_client.ts",
    `--mode=${mode}`,
    `--port=${redis.port}`,
    `--seconds=${seconds}`,
    `--connections=${CONNECTIONS}`,
    `--claim-sha=${redis.claimSha}`,
    `--release-sha=${redis.releaseSha}`,
    ...extra,
  ]);
  const status = await proc.done;
  if (!status.success) throw new Error(`redis ${mode} client failed: ${describeExit(proc)}`);
  return proc;
}

/** Redis's own CPU counters (main thread and the rest), in seconds. */
async function redisCpuSeconds(redis: RedisServer): Promise<number> {
  const info = String(await redis.control.call("INFO", "cpu"));
  const field = (name: string) => Number(info.match(new RegExp(`^${name}:([\\d.]+)`, "m"))?.[1]);
  return field("used_cpu_sys") + field("used_cpu_user");
}

/** Warm-up, then the measured load run with its CPU use. */
async function measure(ctx: BenchContext, redis: RedisServer, label: string, seconds: number) {
  console.error(`  ${label}: client warm-up ${ctx.warmupSeconds}s, then ${seconds}s`);
  await runClient(ctx, redis, "load", ctx.warmupSeconds);
  await checkPool(redis);
  const aofBefore = String(await redis.control.call("INFO", "persistence"));
  const { result: proc, cpu } = await withCpu(
    ctx.sup,
    redis.server,
    () => runClient(ctx, redis, "load", seconds),
  );
  await checkPool(redis);
  const result = resultLine<RedisLoadResult>(proc);
  const aof = String(await redis.control.call("INFO", "persistence"));
  const delayed = (text: string) => Number(text.match(/^aof_delayed_fsync:(\d+)/m)?.[1] ?? 0);
  return {
    result,
    cpu,
    aofDelayedFsyncs: delayed(aof) - delayed(aofBefore),
    aofSizeBytes: Number(aof.match(/^aof_current_size:(\d+)/m)?.[1] ?? NaN),
  };
}

function loadRow(
  redis: RedisServer,
  scenario: string,
  settings: string,
  durable: boolean,
  measured: { result: RedisLoadResult; cpu: CpuUse | null; aofSizeBytes: number },
): Row {
  const { result, cpu } = measured;
  const loopsPerSec = result.loops / result.seconds;
  return {
    scenario,
    what: `Redis ${redis.version} (${settings}): Lua SPOP claim → release`,
    generator: `${CLIENT}, ${CONNECTIONS} connections (${describeGeneratorCpu(cpu)})`,
    concurrency: CONNECTIONS,
    poolSize: POOL_SIZE,
    opsPerSec: loopsPerSec,
    unit: "claim loops/s",
    p50Ms: result.claimMs.p50,
    p99Ms: result.claimMs.p99,
    latencyOf: "claims only (EVALSHA sent → reply read)",
    doubleAllocations: null,
    fencingViolations: null,
    errors: result.errors + result.emptyClaims + result.refusedReleases,
    durable,
    comparedWith: "wrk",
    details: { ...measured, loopsPerSec },
    note: `${count.format(2 * loopsPerSec)} EVALSHA/s (claims and releases); all commands ` +
      `p50/p99 ${result.allMs.p50?.toFixed(2)}/${result.allMs.p99?.toFixed(2)} ms; ` +
      `${result.emptyClaims} empty claims, ${result.refusedReleases} refused releases, ` +
      `${result.errors} errors; ${describeCpu(cpu)}; p50/p99 time claims only ` +
      `(EVALSHA sent → reply read).`,
  };
}

async function record(ctx: BenchContext, redis: RedisServer): Promise<Row> {
  console.error(
    `  redis: double-allocation checker, ${CONNECTIONS} connections, ${ctx.checkerSeconds}s`,
  );
  const dir = await ctx.sup.tempDir("redis-record-");
  const out = `${dir}/history.json`;
  const proc = await runClient(ctx, redis, "record", ctx.checkerSeconds, [
    `--max-hold-ms=${MAX_HOLD_MS}`,
    `--out=${out}`,
  ]);
  resultLine(proc);
  await checkPool(redis);
  const run: CheckerRun = JSON.parse(await Deno.readTextFile(out));
  await Deno.remove(out);
  return checkerRow({
    scenario: "redis-checker",
    what: `Redis ${redis.version} (appendonly yes, appendfsync always)`,
    generator: `${CLIENT}, ${CONNECTIONS} connections`,
    durable: true,
  }, run);
}

/** The Redis peer: appendfsync always, its recorded checker run, then appendfsync everysec. */
export async function redisScenario(ctx: BenchContext): Promise<Row[]> {
  const found = await findOrInstall(ctx.sup, {
    name: "redis",
    label: "Redis",
    aptPackage: "redis-server",
  }, findRedis);
  if (found === null) return [];
  const redis = await startRedis(ctx);
  try {
    await fillPool(redis);
    const before = await redisCpuSeconds(redis);
    const always = await measure(ctx, redis, "redis appendfsync always", ctx.seconds);
    const checker = await record(ctx, redis);
    await redis.control.call("CONFIG", "SET", "appendfsync", "everysec");
    const everysec = await measure(
      ctx,
      redis,
      "redis appendfsync everysec",
      secondarySeconds(ctx.seconds),
    );
    const redisCpu = await redisCpuSeconds(redis) - before;
    if (redis.server.exited) throw new Error(`redis died: ${describeExit(redis.server)}`);
    return [
      loadRow(redis, "redis", "appendonly yes, appendfsync always", true, always),
      { ...checker, details: { ...checker.details, redisCpuSecondsWholeScenario: redisCpu } },
      loadRow(redis, "redis-everysec", "appendfsync everysec: not durable", false, everysec),
    ];
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`${message}\n${describeExit(redis.server)}`, { cause: error });
  } finally {
    redis.control.close();
    await stopServer(ctx.sup, redis.server, "SIGTERM");
  }
}
