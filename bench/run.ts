/**
 * allot's benchmark: one command, one run, every scenario on this machine, one after
 * another. Prints a markdown table and writes bench/results.json.
 *
 *   deno task bench [--quick] [--only=allot,kv,interleaved,renew,...] [--duration=secs]
 *
 * Every server and load generator runs as a child process that the run owns and
 * stops, with its temp dirs, however the run ends (including SIGINT).
 */
import { parseArgs } from "node:util";
import { Supervisor } from "./procs.ts";
import { otherShare, otherShareNow, sampleCpu, stealShare } from "./cpu.ts";
import {
  machineInfo,
  type MeasuredRow,
  rateAgainstAllot,
  renderNotes,
  renderTable,
  RESULTS_PATH,
  writeResults,
} from "./report.ts";
import { type BenchContext, SCENARIOS } from "./scenarios.ts";

/** What the command line asked for. */
interface Options {
  quick: boolean;
  only: string[];
  seconds: number;
}

const FULL_SECONDS = 30;
const QUICK_SECONDS = 5;
/** Above this share of the CPU taken by work outside the run, its figures are suspect. */
const BUSY_SHARE = 0.1;

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      only: { type: "string" },
      duration: { type: "string" },
    },
    strict: true,
  });
  const names = Object.keys(SCENARIOS);
  const wanted = values.only?.split(",").map((s) => s.trim()).filter((s) => s !== "") ?? names;
  const unknown = wanted.filter((name) => !names.includes(name));
  if (unknown.length > 0 || wanted.length === 0) {
    throw new Error(`--only takes a list of: ${names.join(", ")} (got "${values.only}")`);
  }
  const seconds = values.duration === undefined
    ? (values.quick ? QUICK_SECONDS : FULL_SECONDS)
    : Number(values.duration);
  if (!Number.isInteger(seconds) || seconds < 1) {
    throw new Error(`--duration takes a whole number of seconds (got "${values.duration}")`);
  }
  return { quick: values.quick, only: names.filter((name) => wanted.includes(name)), seconds };
}

function contextFor(sup: Supervisor, options: Options): BenchContext {
  return {
    sup,
    seconds: options.seconds,
    checkerSeconds: Math.max(3, Math.round(options.seconds / 2)),
    warmupSeconds: options.quick ? 1 : 2,
  };
}

/** Warns when work outside this run took a share of the CPU; returns the share. */
function warnIfBusy(share: number | null, when: string): number | null {
  if (share !== null && share > BUSY_SHARE) {
    console.error(
      `warning: other work kept ${(100 * share).toFixed(0)}% of the CPU busy ${when}: ` +
        "figures measured then are likely low",
    );
  }
  return share;
}

/** An error's message and stack, with its causes (fetch's "fetch failed" says little alone). */
function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = error.cause === undefined ? "" : `\ncaused by: ${describeError(error.cause)}`;
  return `${error.stack ?? error.message}${cause}`;
}

/** Runs one scenario, recording how much of the CPU other work took meanwhile. */
async function runScenario(ctx: BenchContext, name: string): Promise<MeasuredRow[]> {
  const from = await sampleCpu(ctx.sup);
  const rows = await SCENARIOS[name](ctx);
  const to = await sampleCpu(ctx.sup);
  const otherCpu = warnIfBusy(otherShare(from, to), `during ${name}`);
  const stealCpu = stealShare(from, to);
  return rows.map((row) => ({ ...row, otherCpu, stealCpu }));
}

/** Runs the chosen scenarios in order; a failing one is recorded and the rest still run. */
async function runScenarios(ctx: BenchContext, names: string[]) {
  const rows: MeasuredRow[] = [];
  const failures: { scenario: string; error: string }[] = [];
  for (const name of names) {
    if (ctx.sup.closing) break;
    console.error(`== ${name}`);
    try {
      rows.push(...await runScenario(ctx, name));
    } catch (error) {
      if (ctx.sup.closing) break;
      const message = describeError(error);
      console.error(`!! ${name} failed: ${message}`);
      failures.push({ scenario: name, error: message });
    }
  }
  return { rows, failures };
}

async function main(): Promise<number> {
  let options: Options;
  try {
    options = parseOptions(Deno.args);
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    return 2;
  }
  const sup = new Supervisor();
  try {
    const ctx = contextFor(sup, options);
    const machine = await machineInfo(sup);
    const otherCpuBefore = warnIfBusy(await otherShareNow(sup), "before the run");
    const { rows, failures } = await runScenarios(ctx, options.only);
    if (sup.closing) return 130; // interrupted: no partial results over the last good ones
    const rated = rateAgainstAllot(rows);
    const table = renderTable(rated);
    const notes = renderNotes(rated, failures);
    console.log(`\n${table}\n\n${notes}\n`);
    await writeResults({
      command: `deno run --allow-net --allow-env --allow-read --allow-write --allow-run ` +
        `bench/run.ts ${Deno.args.join(" ")}`.trim(),
      options: { ...options, checkerSeconds: ctx.checkerSeconds, warmupSeconds: ctx.warmupSeconds },
      machine,
      finishedAt: new Date().toISOString(),
      otherCpuBefore,
      otherCpuAfter: warnIfBusy(await otherShareNow(sup), "after the run"),
      scenarios: rated,
      failures,
      table,
      notes,
    });
    console.error(`wrote ${RESULTS_PATH}`);
    const unsafe = rows.some((r) =>
      !r.unsafeByDesign && (r.doubleAllocations ?? 0) + (r.fencingViolations ?? 0) > 0
    );
    return failures.length > 0 || unsafe ? 1 : 0;
  } finally {
    await sup.close();
  }
}

if (import.meta.main) Deno.exit(await main());
