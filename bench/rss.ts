/**
 * Scenario 7 of the issue: the server's peak resident memory at 100,000 resources. The
 * real server (main.ts, file-backed KV) is seeded with 100,000 single-slot resources
 * through status batches, then driven by the same wrk claim → release load as scenario
 * 1, while /proc/<pid>/status is read every 250 ms. The figure is VmHWM, the kernel's
 * high-water mark of the process's resident set over its whole life (seeding included).
 */
import {
  kbToMb,
  type Memory,
  readMemory,
  serverStderr,
  startAllot,
  TOKENS,
  withAllot,
} from "./harness.ts";
import { LEASE_MS } from "./peers/common.ts";
import type { BenchContext, Row } from "./scenarios.ts";
import { putRegion, seedThroughStatus } from "./seed.ts";
import { describeLoad, runWrk, wrkErrors } from "./wrk.ts";

const REGION = "bench";
const FULL_POOL = 100_000;
/** --quick seeds fewer: seeding runs at about 2,000 resources/s. */
const QUICK_POOL = 10_000;
const SAMPLE_MS = 250;
const TARGET_MB = 200;

const count = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const mb = (kb: number) => `${kbToMb(kb).toFixed(1)} MB`;

/** Reads the server's memory every SAMPLE_MS until stopped; keeps the largest VmRSS. */
class MemorySampler {
  peakRssKb = 0;
  last: Memory | null = null;
  samples = 0;
  #running = true;
  #loop: Promise<void>;

  constructor(ctx: BenchContext, pid: number) {
    this.#loop = (async () => {
      while (this.#running) {
        const memory = await readMemory(ctx, pid);
        if (memory) {
          this.last = memory;
          this.peakRssKb = Math.max(this.peakRssKb, memory.rssKb);
          this.samples++;
        }
        await new Promise((resolve) => setTimeout(resolve, SAMPLE_MS));
      }
    })();
  }

  async stop(): Promise<{ peakRssKb: number; last: Memory | null; samples: number }> {
    this.#running = false;
    await this.#loop;
    return { peakRssKb: this.peakRssKb, last: this.last, samples: this.samples };
  }
}

/** Scenario 7: peak RSS of the server with 100,000 resources and a claim load. */
export async function rssScenario(ctx: BenchContext): Promise<Row[]> {
  const pool = ctx.seconds < 10 ? QUICK_POOL : FULL_POOL;
  const loadSeconds = Math.max(3, Math.min(10, Math.round(ctx.seconds / 3)));
  const allot = await startAllot(ctx, "rss", "main.ts");
  return await withAllot(ctx, allot, async () => {
    const pid = allot.server.pid;
    const atStart = await readMemory(ctx, pid);
    await putRegion(allot.admin, REGION, { lease: { defaultMs: LEASE_MS, maxMs: LEASE_MS } });
    console.error(`  rss: seeding ${count.format(pool)} resources through status batches`);
    const seeding = new MemorySampler(ctx, pid);
    const seed = await seedThroughStatus(allot.admin, REGION, pool);
    const duringSeed = await seeding.stop();
    const afterSeed = await readMemory(ctx, pid);
    console.error(`  rss: wrk claim → release for ${loadSeconds}s`);
    const load = { threads: 2, connections: 64, seconds: loadSeconds };
    const sampler = new MemorySampler(ctx, pid);
    const wrk = await runWrk(ctx.sup, {
      baseUrl: allot.baseUrl,
      claimPath: `/v1/regions/${REGION}/claims`,
      releasePrefix: "/v1/claims/",
      token: TOKENS.client,
    }, load);
    const duringLoad = await sampler.stop();
    const end = await readMemory(ctx, pid);
    if (!end) throw new Error(`cannot read /proc/${pid}/status: is the server gone?`);
    const peakKb = end.hwmKb;
    return [{
      scenario: "rss",
      what: `allot (main.ts) peak resident memory, ${count.format(pool)} resources, ` +
        `under claim → release load`,
      generator: `${describeLoad(load)}, claim_release.lua, ${loadSeconds}s`,
      concurrency: load.connections,
      poolSize: pool,
      opsPerSec: kbToMb(peakKb),
      unit: "MB peak RSS",
      figure: `${mb(peakKb)} (${(peakKb / 1024).toFixed(1)} MiB) peak RSS (VmHWM)`,
      p50Ms: wrk.latencyMs.p50,
      p99Ms: wrk.latencyMs.p99,
      latencyOf: "every request of the claim load, as wrk reports it",
      doubleAllocations: null,
      fencingViolations: null,
      errors: wrkErrors(wrk, [201, 204]),
      durable: true,
      comparedWith: null,
      targets: [{
        target: `≤ ${TARGET_MB} MB (10^6 bytes) at ${count.format(FULL_POOL)} resources`,
        met: pool === FULL_POOL ? kbToMb(peakKb) <= TARGET_MB : null,
      }],
      note: `VmHWM ${mb(peakKb)} (MB = 10^6 bytes; ${(peakKb / 1024).toFixed(1)} MiB); ` +
        `VmRSS ${atStart ? mb(atStart.rssKb) : "—"} at start, ${
          afterSeed ? mb(afterSeed.rssKb) : "—"
        } after seeding ${count.format(pool)} resources (${seed.seconds.toFixed(1)} s, ` +
        `${count.format(pool / seed.seconds)} resources/s through status), highest ` +
        `${mb(duringLoad.peakRssKb)} under the claim load ` +
        `(${count.format(wrk.releases / wrk.seconds)} claim loops/s, statuses ` +
        `${JSON.stringify(wrk.statuses)}), ${mb(end.rssKb)} at the end.`,
      details: {
        pool,
        seed,
        memoryKb: { atStart, duringSeed, afterSeed, duringLoad, end },
        wrk,
        claimLoopsPerSec: wrk.releases / wrk.seconds,
        serverStderr: serverStderr(allot),
      },
    }];
  });
}
