/**
 * The Redis peer's client, in two modes, both `connections` connections each looping
 * claim (EVALSHA of CLAIM_LUA) then release (EVALSHA of RELEASE_LUA), one command in
 * flight per connection:
 * - `load`: as fast as it goes; prints `RESULT {loops, latencies, …}`.
 * - `record`: claim → hold 0..maxHoldMs → release, recording every grant for
 *   bench/checker.ts; writes the CheckerRun as JSON to `--out`.
 *
 *   deno run -A bench/peers/redis_client.ts --mode=load|record --port=P --seconds=S
 *     --connections=N --claim-sha=SHA --release-sha=SHA [--max-hold-ms=5 --out=FILE]
 */
import { parseArgs } from "node:util";
import { type CheckerRun, emptyRun } from "../checker.ts";
import { percentile } from "../stats.ts";
import { encodeCommand, KEYS, type Reply, RespConnection } from "./resp.ts";

const BACKOFF_MS = 50;
const MAX_SAMPLES = 5;

interface Options {
  mode: "load" | "record";
  port: number;
  seconds: number;
  connections: number;
  claimSha: string;
  releaseSha: string;
  maxHoldMs: number;
  out: string;
}

/** What a load run measured. Latencies in ms, from sending a command to reading its reply. */
export interface RedisLoadResult {
  seconds: number;
  loops: number;
  /** Claims answered nil (no free id). */
  emptyClaims: number;
  /** Releases answered 0 (the holder did not match). */
  refusedReleases: number;
  errors: number;
  samples: string[];
  claimMs: { p50: number | null; p99: number | null; mean: number | null };
  releaseMs: { p50: number | null; p99: number | null };
  allMs: { p50: number | null; p99: number | null };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parseOptions(): Options {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      mode: { type: "string" },
      port: { type: "string" },
      seconds: { type: "string" },
      connections: { type: "string" },
      "claim-sha": { type: "string" },
      "release-sha": { type: "string" },
      "max-hold-ms": { type: "string", default: "5" },
      out: { type: "string", default: "" },
    },
    strict: true,
  });
  if (values.mode !== "load" && values.mode !== "record") throw new Error("--mode=load|record");
  return {
    mode: values.mode,
    port: Number(values.port),
    seconds: Number(values.seconds),
    connections: Number(values.connections),
    claimSha: values["claim-sha"] ?? "",
    releaseSha: values["release-sha"] ?? "",
    maxHoldMs: Number(values["max-hold-ms"]),
    out: values.out,
  };
}

/** The two commands of a connection's loop: the claim is constant, the release takes the id. */
function commands(options: Options, holder: string) {
  const claim = encodeCommand([
    "EVALSHA",
    options.claimSha,
    "3",
    KEYS.free,
    KEYS.held,
    KEYS.fence,
    holder,
  ]);
  const release = (id: string) =>
    encodeCommand(["EVALSHA", options.releaseSha, "2", KEYS.free, KEYS.held, id, holder]);
  return { claim, release };
}

function asGrant(reply: Reply): { id: string; token: number } | null {
  if (reply === null) return null;
  if (!Array.isArray(reply) || typeof reply[0] !== "string" || typeof reply[1] !== "number") {
    throw new Error(`unexpected claim reply: ${JSON.stringify(reply)}`);
  }
  return { id: reply[0], token: reply[1] };
}

async function openAll(options: Options): Promise<RespConnection[]> {
  return await Promise.all(
    Array.from({ length: options.connections }, () => RespConnection.connect(options.port)),
  );
}

async function load(options: Options): Promise<RedisLoadResult> {
  const conns = await openAll(options);
  const claimMs: number[] = [];
  const releaseMs: number[] = [];
  const result = { loops: 0, emptyClaims: 0, refusedReleases: 0, errors: 0 };
  const samples: string[] = [];
  const start = performance.now();
  const deadline = start + options.seconds * 1000;
  await Promise.all(conns.map(async (conn, i) => {
    const { claim, release } = commands(options, `load-${i}`);
    while (performance.now() < deadline) {
      try {
        const sent = performance.now();
        const grant = asGrant(await conn.send(claim));
        const granted = performance.now();
        if (!grant) {
          result.emptyClaims++;
          await sleep(BACKOFF_MS);
          continue;
        }
        claimMs.push(granted - sent);
        const released = await conn.send(release(grant.id));
        releaseMs.push(performance.now() - granted);
        if (released === 1) result.loops++;
        else result.refusedReleases++;
      } catch (error) {
        result.errors++;
        if (samples.length < MAX_SAMPLES) samples.push(String(error).slice(0, 400));
        await sleep(BACKOFF_MS);
      }
    }
  }));
  const seconds = (performance.now() - start) / 1000;
  for (const conn of conns) conn.close();
  const mean = claimMs.length ? claimMs.reduce((a, b) => a + b, 0) / claimMs.length : null;
  return {
    seconds,
    ...result,
    samples,
    claimMs: { p50: percentile(claimMs, 50), p99: percentile(claimMs, 99), mean },
    releaseMs: { p50: percentile(releaseMs, 50), p99: percentile(releaseMs, 99) },
    allMs: {
      p50: percentile([...claimMs, ...releaseMs], 50),
      p99: percentile([...claimMs, ...releaseMs], 99),
    },
  };
}

async function record(options: Options): Promise<CheckerRun> {
  const conns = await openAll(options);
  const run = emptyRun(options.connections);
  const note = (status: string) => run.statuses[status] = (run.statuses[status] ?? 0) + 1;
  const start = performance.now();
  const deadline = start + options.seconds * 1000;
  await Promise.all(conns.map(async (conn, i) => {
    const { claim, release } = commands(options, `checker-${i}`);
    while (performance.now() < deadline) {
      try {
        const claimSentAt = performance.now();
        const grant = asGrant(await conn.send(claim));
        const grantedAt = performance.now();
        if (!grant) {
          note("no free id");
          await sleep(BACKOFF_MS);
          continue;
        }
        note("claimed");
        run.claimLatencyMs.push(grantedAt - claimSentAt);
        await sleep(Math.random() * options.maxHoldMs);
        const releaseSentAt = performance.now();
        const released = await conn.send(release(grant.id));
        const releasedAt = released === 1 ? performance.now() : null;
        note(releasedAt === null ? "release refused" : "released");
        run.holds.push({
          resource: grant.id,
          slot: 0,
          fencingToken: String(grant.token),
          claimSentAt,
          grantedAt,
          releaseSentAt,
          releasedAt,
        });
      } catch (error) {
        run.transportErrors++;
        if (run.samples.length < MAX_SAMPLES) run.samples.push(String(error).slice(0, 400));
        await sleep(BACKOFF_MS);
      }
    }
  }));
  run.seconds = (performance.now() - start) / 1000;
  for (const conn of conns) conn.close();
  return run;
}

async function main(): Promise<void> {
  const options = parseOptions();
  if (options.mode === "load") {
    console.log(`RESULT ${JSON.stringify(await load(options))}`);
    return;
  }
  const run = await record(options);
  await Deno.writeTextFile(options.out, JSON.stringify(run));
  console.log(`RESULT ${JSON.stringify({ grants: run.holds.length })}`);
}

if (import.meta.main) await main();
