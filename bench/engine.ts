/**
 * allot's claim engine without its HTTP layer: async loops in the server's own process,
 * each claiming through a GroupCommitter and releasing through a GroupEnder (what the
 * claim and release routes call), on the server's KV. Run beside allot over HTTP (the
 * interleaved scenario), it splits allot's cost per loop into the engine's (KV reads,
 * commits, values, hashes) and the HTTP layer's with its load generator's.
 */
import { type Allocator, createClaim } from "../lib/allocate.ts";
import { releaseClaim } from "../lib/claims.ts";
import type { Clock } from "../lib/clock.ts";
import { GroupEnder } from "../lib/ender.ts";
import { GroupCommitter } from "../lib/group.ts";
import { cpuSecondsOf } from "./cpu.ts";
import { percentile } from "./stats.ts";

/** What one run of the loops measured. */
export interface EngineResult {
  loops: number;
  seconds: number;
  /** Claim latency (createClaim), ms. */
  claimP50Ms: number | null;
  claimP99Ms: number | null;
  /** Grants of a slot another loop held at the time, counted as they were answered. */
  doubleAllocations: number;
  /** Claims or releases that threw (no capacity, contention, a lost lease). */
  errors: number;
  /** The whole process's CPU (every thread) over the run; null without /proc. */
  cpuSeconds: number | null;
}

/** Where and how the loops run; `stop` is asked before each loop with the loops done so far. */
export interface EngineRun {
  region: string;
  loops: number;
  stop: (done: number) => boolean;
  /** What claims go through: a GroupCommitter on the same KV unless given. */
  allocator?: Allocator;
}

async function processCpuSeconds(): Promise<number | null> {
  try {
    return cpuSecondsOf(await Deno.readTextFile("/proc/self/stat"));
  } catch {
    return null;
  }
}

/**
 * Runs `run.loops` claim → release loops until `run.stop` says so. Every grant is checked
 * against the slots the loops hold at that moment, as the HTTP checker does.
 */
export async function runClaimLoops(
  kv: Deno.Kv,
  clock: Clock,
  run: EngineRun,
): Promise<EngineResult> {
  const allocator = run.allocator ?? new GroupCommitter(kv, clock);
  const ender = new GroupEnder(kv, clock);
  const held = new Set<string>();
  const latencies: number[] = [];
  let done = 0;
  let doubleAllocations = 0;
  let errors = 0;
  const loop = async () => {
    while (!run.stop(done)) {
      const started = performance.now();
      try {
        const { grant } = await createClaim(kv, clock, {
          region: run.region,
          caller: "engine",
          input: { holder: "engine" },
        }, allocator);
        latencies.push(performance.now() - started);
        const slot = `${grant.servedBy}/${grant.resource}/${grant.slot}`;
        if (held.has(slot)) doubleAllocations++;
        held.add(slot);
        try {
          await releaseClaim(kv, clock, grant.id, {
            secret: grant.secret,
            access: () => {},
          }, ender);
          done++;
        } finally {
          held.delete(slot);
        }
      } catch {
        errors++;
      }
    }
  };
  const cpuBefore = await processCpuSeconds();
  const start = performance.now();
  await Promise.all(Array.from({ length: run.loops }, loop));
  const seconds = (performance.now() - start) / 1000;
  const cpuAfter = await processCpuSeconds();
  return {
    loops: done,
    seconds,
    claimP50Ms: percentile(latencies, 50),
    claimP99Ms: percentile(latencies, 99),
    doubleAllocations,
    errors,
    cpuSeconds: cpuBefore === null || cpuAfter === null ? null : cpuAfter - cpuBefore,
  };
}
