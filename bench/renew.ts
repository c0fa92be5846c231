/**
 * Scenario: what group commit pays for renews. 64 leases, each renewed in its own loop
 * inside allot's server process (bench/engine_server.ts, file-backed KV), through the
 * GroupRenewer the renew route uses, and with every renew committing alone, in
 * alternating rounds (the order reversed every other round) so steal time hits both.
 */
import type { RenewResult } from "./engine.ts";
import { startAllot, withServer } from "./harness.ts";
import { count, POOL_SIZE } from "./peers/common.ts";
import { describeExit } from "./procs.ts";
import { type BenchContext, LOOPS, type Row, runBenchRoute, seedAllot } from "./scenarios.ts";
import { measured, percentile, worst } from "./stats.ts";

const ROUNDS = 3;

function runRenews(baseUrl: string, seconds: number, grouped: boolean) {
  return runBenchRoute<RenewResult>(baseUrl, "/bench/renew", { seconds, loops: LOOPS, grouped });
}

/** Renews grouped and alone, alternated; two rows. */
export async function renewScenario(ctx: BenchContext): Promise<Row[]> {
  const roundSeconds = Math.max(1, Math.round(ctx.seconds / (2 * ROUNDS)));
  const { server, baseUrl } = await startAllot(ctx, "renew", "bench/engine_server.ts");
  return await withServer(ctx, server, async () => {
    console.error("  renew: seeding");
    await seedAllot(baseUrl);
    await runRenews(baseUrl, ctx.warmupSeconds, true);
    await runRenews(baseUrl, ctx.warmupSeconds, false);
    const grouped: RenewResult[] = [];
    const alone: RenewResult[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      console.error(`  renew: round ${i + 1}/${ROUNDS}, ${roundSeconds}s each`);
      for (const group of i % 2 === 0 ? [true, false] : [false, true]) {
        (group ? grouped : alone).push(await runRenews(baseUrl, roundSeconds, group));
      }
      if (server.exited) throw new Error(`server died under load: ${describeExit(server)}`);
    }
    return renewRows(grouped, alone, roundSeconds);
  });
}

/** Two rows, grouped and alone: renews/s over all rounds, the ratio in the grouped row's note. */
export function renewRows(grouped: RenewResult[], alone: RenewResult[], roundSeconds: number) {
  const row = (name: string, runs: RenewResult[], how: string): Row => ({
    scenario: `renew-${name}`,
    what: `allot's renew engine without HTTP: ${LOOPS} leases each renewed in a loop, ${how}`,
    generator:
      `${LOOPS} async loops in the server process, ${ROUNDS} rounds of ${roundSeconds} s, ` +
      "alternating",
    concurrency: LOOPS,
    poolSize: POOL_SIZE,
    opsPerSec: runs.reduce((n, r) => n + r.renews, 0) / runs.reduce((n, r) => n + r.seconds, 0),
    unit: "renews/s",
    p50Ms: percentile(measured(runs.map((r) => r.p50Ms)), 50),
    p99Ms: worst(runs.map((r) => r.p99Ms)),
    latencyOf: "each renew; p50 the median round's, p99 the worst round's",
    doubleAllocations: null,
    fencingViolations: null,
    errors: runs.reduce((n, r) => n + r.errors, 0),
    durable: true,
    comparedWith: null,
    details: { rounds: runs },
  });
  const group = row("group", grouped, "through the GroupRenewer (as the renew route)");
  const lone = row("alone", alone, "each renew its own commit (renewAlone)");
  const perRound = (runs: RenewResult[]) =>
    runs.map((r) => count.format(r.renews / r.seconds)).join(", ");
  const committed = grouped.reduce((n, r) => n + (r.group?.renewed ?? 0), 0);
  const commits = grouped.reduce((n, r) => n + (r.group?.commits ?? 0), 0);
  group.note = `renews/s per round ${perRound(grouped)}; ${
    (group.opsPerSec / lone.opsPerSec).toFixed(2)
  }× renewing alone in the same rounds; ${
    commits === 0 ? "no" : (committed / commits).toFixed(1)
  } renews per commit; ${grouped.reduce((n, r) => n + (r.group?.alone ?? 0), 0)} settled alone.`;
  lone.note = `renews/s per round ${perRound(alone)}; one commit per renew.`;
  return [group, lone];
}
