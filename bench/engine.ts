/**
 * allot's claim engine without its HTTP layer: async loops in the server's own process,
 * each claiming through a GroupCommitter and releasing through a GroupEnder that share
 * their LeasePlaces, as createApp builds them for the claim and release routes. Run beside allot over HTTP (the
 * interleaved scenario), it splits allot's cost per loop into the engine's (KV reads,
 * commits, values, hashes) and the HTTP layer's with its load generator's. Renew loops
 * (the renew scenario) show what group commit pays for renews.
 */
import { type Allocator, createClaim } from "../lib/allocate.ts";
import { releaseClaim, renewClaim, type Renewer } from "../lib/claims.ts";
import type { Clock } from "../lib/clock.ts";
import { GroupEnder } from "../lib/ender.ts";
import { GroupCommitter } from "../lib/group.ts";
import { LeasePlaces } from "../lib/leases.ts";
import { GroupRenewer, type RenewerStats } from "../lib/renewer.ts";
import type { ClaimGrant } from "../lib/schemas.ts";
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
}

/** Where and how the loops run; `stop` is asked before each loop with the loops done so far. */
export interface EngineRun {
  region: string;
  loops: number;
  stop: (done: number) => boolean;
  /** What claims go through: unless given, a GroupCommitter sharing the ender's LeasePlaces. */
  allocator?: Allocator;
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
  const places = new LeasePlaces();
  const allocator = run.allocator ?? new GroupCommitter(kv, clock, places);
  const ender = new GroupEnder(kv, clock, places);
  /** Loops holding each slot right now: more than one is a double allocation. */
  const holders = new Map<string, number>();
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
        const holding = holders.get(slot) ?? 0;
        if (holding > 0) doubleAllocations++;
        holders.set(slot, holding + 1);
        try {
          await releaseClaim(kv, clock, grant.id, {
            secret: grant.secret,
            access: () => {},
          }, ender);
          done++;
        } finally {
          const left = holders.get(slot)! - 1;
          if (left === 0) holders.delete(slot);
          else holders.set(slot, left);
        }
      } catch {
        errors++;
      }
    }
  };
  const start = performance.now();
  await Promise.all(Array.from({ length: run.loops }, loop));
  return {
    loops: done,
    seconds: (performance.now() - start) / 1000,
    claimP50Ms: percentile(latencies, 50),
    claimP99Ms: percentile(latencies, 99),
    doubleAllocations,
    errors,
  };
}

/** What one run of renew loops measured. */
export interface RenewResult {
  renews: number;
  /** From the first renew to the last renew's answer (claims and releases excluded). */
  seconds: number;
  /** Renew latency (renewClaim), ms. */
  p50Ms: number | null;
  p99Ms: number | null;
  /** Renews that threw, or answered another claim or a changed fencing token. */
  errors: number;
  /** The GroupRenewer's counters; null when each renew committed alone. */
  group: RenewerStats | null;
}

/**
 * Claims `run.loops` leases, then renews each in its own loop until `run.stop` (asked
 * with the renews attempted so far) says so, then releases them: through `run.renewer`
 * (a GroupRenewer, as the renew route), or each renew with its own commit (renewAlone)
 * without one, to show what grouping them pays.
 */
export async function runRenewLoops(
  kv: Deno.Kv,
  clock: Clock,
  run: Omit<EngineRun, "allocator"> & { renewer?: Renewer },
): Promise<RenewResult> {
  const { renewer } = run;
  const grants = await Promise.all(Array.from({ length: run.loops }, async () => {
    const { grant } = await createClaim(kv, clock, {
      region: run.region,
      caller: "engine",
      input: { holder: "engine" },
    });
    return grant;
  }));
  const latencies: number[] = [];
  let renews = 0;
  let errors = 0;
  const loop = async (grant: ClaimGrant) => {
    const request = { secret: grant.secret, access: () => {} };
    while (!run.stop(renews + errors)) {
      const started = performance.now();
      try {
        const { claim } = await renewClaim(kv, clock, grant.id, request, renewer);
        latencies.push(performance.now() - started);
        if (claim.id !== grant.id || claim.fencingToken !== grant.fencingToken) errors++;
        else renews++;
      } catch {
        errors++;
      }
    }
  };
  const start = performance.now();
  await Promise.all(grants.map(loop));
  const seconds = (performance.now() - start) / 1000;
  for (const grant of grants) {
    await releaseClaim(kv, clock, grant.id, { secret: grant.secret, access: () => {} });
  }
  return {
    renews,
    seconds,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    errors,
    group: renewer instanceof GroupRenewer ? { ...renewer.stats } : null,
  };
}
