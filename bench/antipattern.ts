/**
 * Scenario 4 of the issue: the anti-pattern allot replaces, measured. Check-then-act
 * claims over a cached view of a file-backed Deno KV (bench/antipattern_sim.ts, in a
 * subprocess), for a few (claim rate R, refresh period T, pool N) points: the fraction
 * of claims that acted on stale state beside the arithmetic's R×T/N, and the double
 * allocations the checker's `verify` finds in the recorded history.
 */
import type { AntipatternPoint, AntipatternResult } from "./antipattern_sim.ts";
import { describeExit } from "./procs.ts";
import type { BenchContext, Row } from "./scenarios.ts";

/** Mean hold of every point (each hold is uniform in 0..2H). */
const HOLD_MS = 100;

/** The curve: R×T/N from 0.01 to 1, and the same R and T over a 10× larger pool. */
const POINTS: AntipatternPoint[] = [
  { rate: 100, refreshMs: 100, pool: 1000, holdMs: HOLD_MS },
  { rate: 500, refreshMs: 250, pool: 1000, holdMs: HOLD_MS },
  { rate: 1000, refreshMs: 1000, pool: 1000, holdMs: HOLD_MS },
  { rate: 1000, refreshMs: 1000, pool: 10_000, holdMs: HOLD_MS },
];

const count = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const pct = (n: number) => `${(100 * n).toFixed(1)}%`;

/** Seconds of arrivals per point: a fifth of the measured duration, 2..6 s. */
function pointSeconds(ctx: BenchContext): number {
  return Math.max(2, Math.min(6, Math.round(ctx.seconds / 5)));
}

function toRow(r: AntipatternResult): Row {
  const rate = r.arrivals / r.seconds;
  const bound = (rate * r.refreshMs) / 1000 / r.pool;
  const staleShare = r.granted > 0 ? r.stale / r.granted : 0;
  const ageBound = (rate * r.viewAgeMeanMs) / 1000 / r.pool;
  const v = r.verdict;
  return {
    scenario: `antipattern-R${r.rate}-T${r.refreshMs}-N${r.pool}`,
    what: `anti-pattern (not allot): check-then-act on a view kv.list refreshes every ` +
      `${count.format(r.refreshMs)} ms, blind kv.set; R = ${count.format(r.rate)}/s, ` +
      `hold 0-${2 * r.holdMs} ms`,
    generator: `open-loop arrivals in one Deno process (bench/antipattern_sim.ts)`,
    concurrency: Math.round(rate * (r.holdMs / 1000)),
    poolSize: r.pool,
    opsPerSec: staleShare,
    unit: "of claims acted on stale state",
    figure: `${pct(staleShare)} stale (R×T/N = ${pct(bound)})`,
    p50Ms: r.writeP50Ms,
    p99Ms: r.writeP99Ms,
    latencyOf: "a claim's blind write (decision → commit)",
    doubleAllocations: v.doubleAllocations,
    fencingViolations: v.fencingViolations,
    errors: 0,
    durable: true,
    comparedWith: null,
    unsafeByDesign: true,
    details: { ...r, achievedRate: rate, bound, staleShare, ageBound },
    note: `R ${count.format(rate)}/s achieved, T ${count.format(r.refreshMs)} ms, ` +
      `N ${count.format(r.pool)}: ${count.format(r.granted)} claims, ${r.refused} refused; ` +
      `${count.format(r.stale)} (${pct(staleShare)}) acted on stale state, ` +
      `${(staleShare / bound).toFixed(2)}× R×T/N = ${pct(bound)}; ` +
      `${count.format(r.collided)} took a slot another caller held; the checker found ` +
      `${count.format(v.doubleAllocations)} double allocations ` +
      `(${pct(v.grants > 0 ? v.doubleAllocations / v.grants : 0)} of grants) and ` +
      `${v.fencingViolations} fencing-order violations. The view was on average ` +
      `${count.format(r.viewAgeMeanMs)} ms old at a read (p99 ${
        count.format(r.viewAgeP99Ms ?? 0)
      } ms; ` +
      `one kv.list of the pool took ${count.format(r.refreshMeanMs)} ms): R×age/N = ${
        pct(ageBound)
      }.`,
  };
}

/** Scenario 4: the anti-pattern's curve, in a subprocess on a file-backed KV. */
export async function antipatternScenario(ctx: BenchContext): Promise<Row[]> {
  const dir = await ctx.sup.tempDir("antipattern-");
  const seconds = pointSeconds(ctx);
  console.error(`  antipattern: ${POINTS.length} (R, T, N) points, ${seconds}s each`);
  const proc = ctx.sup.spawn("antipattern", Deno.execPath(), [
    "run",
    "-A",
    "bench/antipattern_sim.ts",
    `${dir}/antipattern.kv`,
    JSON.stringify(POINTS),
    String(seconds),
  ]);
  const status = await proc.done;
  if (!status.success) throw new Error(describeExit(proc));
  const results: AntipatternResult[] = JSON.parse(proc.stdout().trim().split("\n").at(-1)!);
  const rows = results.map(toRow);
  rows.at(-1)!.note += ` ${curveNote(rows)}`;
  return rows;
}

/** Where the measured curve sits against R×T/N, over all the points. */
function curveNote(rows: Row[]): string {
  const measured = rows.filter((r) => (r.details.bound as number) > 0 && r.opsPerSec > 0);
  if (measured.length === 0) return "";
  const range = (values: number[]) =>
    `${Math.min(...values).toFixed(2)}-${Math.max(...values).toFixed(2)}×`;
  const toBound = measured.map((r) => r.opsPerSec / (r.details.bound as number));
  const toAge = measured.map((r) => r.opsPerSec / (r.details.ageBound as number));
  return `Over the points with stale claims, the measured share is ${range(toBound)} R×T/N ` +
    `and ${range(toAge)} R×age/N, age being the view's measured mean age at a read: about ` +
    `T/2 plus the time one kv.list of the pool takes, which grows with N and with the ` +
    `load on the machine. So the share tracks R×age/N, below R×T/N while the list is fast ` +
    `(R×T/N is the share for a view always T old, a replica lagging T) and above it when ` +
    `the list is slow; near R×T/N = 1 it saturates (claims since the refresh re-hit the ` +
    `same slots).`;
}
