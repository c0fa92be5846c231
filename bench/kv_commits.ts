/**
 * Raw Deno KV commit rate: `loops` concurrent async loops, each compare-and-swapping its
 * own key (`check({key, versionstamp}).set(key, v)`) on a file-backed KV, for `seconds`.
 * Usage: deno run -A bench/kv_commits.ts <kv path> <seconds> <loops>. Prints one JSON line.
 */
import { percentile } from "./stats.ts";

/** What the run measured. */
export interface KvCommitResult {
  commits: number;
  conflicts: number;
  seconds: number;
  p50Ms: number | null;
  p99Ms: number | null;
}

async function casLoop(
  kv: Deno.Kv,
  key: Deno.KvKey,
  deadline: number,
  result: KvCommitResult,
  latencies: number[],
): Promise<void> {
  let versionstamp: string | null = null;
  for (let value = 0; performance.now() < deadline; value++) {
    const started = performance.now();
    const res = await kv.atomic().check({ key, versionstamp }).set(key, value).commit();
    latencies.push(performance.now() - started);
    if (res.ok) {
      versionstamp = res.versionstamp;
      result.commits++;
    } else {
      result.conflicts++;
      versionstamp = (await kv.get(key)).versionstamp;
    }
  }
}

/** Runs the loops and returns the counts and commit latency. */
export async function measureCommits(
  path: string,
  seconds: number,
  loops: number,
): Promise<KvCommitResult> {
  using kv = await Deno.openKv(path);
  const result: KvCommitResult = { commits: 0, conflicts: 0, seconds, p50Ms: null, p99Ms: null };
  const latencies: number[] = [];
  const start = performance.now();
  const deadline = start + seconds * 1000;
  await Promise.all(
    Array.from({ length: loops }, (_, i) => casLoop(kv, ["bench", i], deadline, result, latencies)),
  );
  result.seconds = (performance.now() - start) / 1000;
  result.p50Ms = percentile(latencies, 50);
  result.p99Ms = percentile(latencies, 99);
  return result;
}

if (import.meta.main) {
  const [path, seconds, loops] = Deno.args;
  console.log(JSON.stringify(await measureCommits(path, Number(seconds), Number(loops))));
}
