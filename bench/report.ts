/** The run's report: machine facts, the markdown table, its notes, and bench/results.json. */
import { commandOutput, REPO_ROOT, type Supervisor } from "./procs.ts";
import type { Row, TargetCheck } from "./scenarios.ts";
import { peerTargetNotes } from "./peers/targets.ts";

/** Where the run writes its results. */
export const RESULTS_PATH = `${REPO_ROOT}bench/results.json`;

/** The machine and code a run measured. */
export interface MachineInfo {
  cores: number;
  cpu: string | null;
  memoryGiB: number | null;
  os: string;
  kernel: string | null;
  deno: string;
  v8: string;
  typescript: string;
  wrk: string | null;
  gitCommit: string | null;
  /** Uncommitted changes in the measured tree (bench/ and BENCHMARKS.md aside). */
  gitDirty: boolean | null;
  date: string;
}

/** A scenario's row with the share of the CPU other work took while it ran. */
export interface MeasuredRow extends Row {
  otherCpu: number | null;
  /** The share of the CPU the hypervisor gave other guests while the scenario ran. */
  stealCpu: number | null;
}

/** A row with allot's figure divided by the row's. */
export interface RatedRow extends MeasuredRow {
  allotRatio: number | null;
}

/** A /proc file's text (Deno wants --allow-all to read /proc; `cat` needs only --allow-run). */
function readProc(sup: Supervisor, path: string): Promise<string | null> {
  return commandOutput(sup, "cat", [path]);
}

/** Cores, CPU, memory, versions, git commit and date, read without extra permissions. */
export async function machineInfo(sup: Supervisor): Promise<MachineInfo> {
  const cpuinfo = await readProc(sup, "/proc/cpuinfo");
  const meminfo = await readProc(sup, "/proc/meminfo");
  const memKb = Number(meminfo?.match(/^MemTotal:\s+(\d+) kB/m)?.[1]);
  const status = await commandOutput(sup, "git", [
    "status",
    "--porcelain",
    "--",
    ".",
    ":!bench",
    ":!BENCHMARKS.md",
  ]);
  return {
    cores: navigator.hardwareConcurrency,
    cpu: cpuinfo?.match(/^model name\s*:\s*(.+)$/m)?.[1] ?? null,
    memoryGiB: memKb ? Math.round(memKb / 1024 / 1024) : null,
    os: `${Deno.build.os} ${Deno.build.arch}`,
    kernel: await readProc(sup, "/proc/sys/kernel/osrelease"),
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
    wrk: (await commandOutput(sup, "/usr/bin/wrk", ["-v"]))?.split("\n")[0] ?? null,
    gitCommit: await commandOutput(sup, "git", ["rev-parse", "HEAD"]),
    gitDirty: status === null ? null : status !== "",
    date: new Date().toISOString(),
  };
}

/** Adds allot's ratio to each row: allot wrk loops/s (or checker claims/s) ÷ the row's figure. */
export function rateAgainstAllot(rows: MeasuredRow[]): RatedRow[] {
  const reference = {
    wrk: rows.find((r) => r.scenario === "allot")?.opsPerSec,
    checker: rows.find((r) => r.scenario === "allot-checker")?.opsPerSec,
    interleaved: rows.find((r) => r.scenario === "interleaved-allot")?.opsPerSec,
  };
  return rows.map((row) => {
    const allot = row.comparedWith === null ? undefined : reference[row.comparedWith];
    return {
      ...row,
      allotRatio: allot !== undefined && row.opsPerSec > 0 ? allot / row.opsPerSec : null,
    };
  });
}

const count = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function ms(value: number | null): string {
  if (value === null) return "—";
  return `${value < 10 ? value.toFixed(2) : value.toFixed(1)} ms`;
}

function yesNo(value: boolean | null): string {
  return value === null ? "n/a" : value ? "yes" : "no";
}

function orDash(value: number | null, format: (n: number) => string = String): string {
  return value === null ? "—" : format(value);
}

/** Each target with pass, MISS, or n/a (not measurable in this run). */
function targetCell(targets: TargetCheck[] | undefined): string {
  if (!targets || targets.length === 0) return "—";
  const verdict = (met: boolean | null) => met === null ? "n/a" : met ? "pass" : "MISS";
  return targets.map((t) => `${t.target}: ${verdict(t.met)}`).join("; ");
}

/** The results as a markdown table. */
export function renderTable(rows: RatedRow[]): string {
  const header = [
    "scenario",
    "what",
    "generator",
    "concurrency",
    "pool size",
    "figure",
    "p50",
    "p99",
    "double allocations",
    "errors",
    "durable",
    "allot ÷ this",
    "target",
    "other CPU",
    "steal",
  ];
  const lines = rows.map((r) => [
    r.scenario,
    r.what,
    r.generator,
    String(r.concurrency),
    orDash(r.poolSize, (n) => count.format(n)),
    r.figure ?? `${count.format(r.opsPerSec)} ${r.unit}`,
    ms(r.p50Ms),
    ms(r.p99Ms),
    orDash(r.doubleAllocations),
    count.format(r.errors),
    yesNo(r.durable),
    orDash(r.allotRatio, (n) => `${n.toFixed(2)}×`),
    targetCell(r.targets),
    orDash(r.otherCpu, (n) => `${(100 * n).toFixed(0)}%`),
    orDash(r.stealCpu, (n) => `${(100 * n).toFixed(0)}%`),
  ]);
  return [header, header.map(() => "---"), ...lines]
    .map((cells) => `| ${cells.join(" | ")} |`)
    .join("\n");
}

function detail<T>(row: RatedRow, name: string): T {
  return row.details[name] as T;
}

function rowNote(row: RatedRow): string {
  if (row.note !== undefined) return `- ${row.scenario}: ${row.note}`;
  const lat = `p50/p99 time ${row.latencyOf}`;
  if (row.scenario.endsWith("-checker")) {
    return `- ${row.scenario}: ${count.format(detail(row, "grants"))} grants on ` +
      `${count.format(detail(row, "slotsUsed"))} slots, ${row.doubleAllocations} double ` +
      `allocations, ${row.fencingViolations} fencing-order violations, ` +
      `${detail(row, "unreleased")} unacknowledged releases; statuses ` +
      `${JSON.stringify(detail(row, "statuses"))}; ${lat}.`;
  }
  if (row.scenario === "kv-raw") {
    return `- ${row.scenario}: ${count.format(detail(row, "commits"))} commits, ` +
      `${detail(row, "conflicts")} conflicts; ${lat}.`;
  }
  let rates = "";
  if (row.details.claimsPerSec !== undefined) {
    const requests = count.format(detail(row, "requestsPerSec"));
    rates = `${requests} requests/s, ${count.format(detail(row, "claimsPerSec"))} claims/s; `;
  }
  return `- ${row.scenario}: ${rates}statuses ${JSON.stringify(detail(row, "statuses"))}; ` +
    `socket errors ${JSON.stringify(detail(row, "socketErrors"))}; ${lat}.`;
}

/** Notes under the table: what each figure counts, the ceiling fraction, and failures. */
export function renderNotes(rows: RatedRow[], failures: { scenario: string }[]): string {
  const notes = rows.map(rowNote);
  const allot = rows.find((r) => r.scenario === "allot");
  const ceiling = rows.find((r) => r.scenario === "hono-ceiling");
  if (allot && ceiling) {
    const claims = detail<number>(allot, "claimsPerSec");
    const requests = detail<number>(allot, "requestsPerSec");
    const percent = (n: number) => `${(100 * n / ceiling.opsPerSec).toFixed(1)}%`;
    notes.push(
      `- allot's ${count.format(claims)} claims/s are ${percent(claims)} of the trivial ` +
        `endpoint's ${count.format(ceiling.opsPerSec)} requests/s (its ` +
        `${count.format(requests)} requests/s, claims and releases, are ${percent(requests)}).`,
    );
  }
  notes.push(...peerTargetNotes(rows));
  notes.push(
    "- allot ÷ this: allot's claim loops/s (wrk) ÷ the row's ops/s; checker rows: allot's " +
      "checker claims/s ÷ the row's; interleaved rows: interleaved-allot's loops/s ÷ the " +
      "row's, all measured in the same alternating rounds (the 3× targets are judged " +
      "there). Committed one at a time, a claim loop is two KV commits (claim, release), " +
      "which would hold allot to 0.50× of kv-raw.",
    "- other CPU: the share of the machine's CPU that work outside this run took while the " +
      "scenario ran; above a few percent, that row's figures are low.",
    "- steal: the share of the machine's CPU time the hypervisor gave to other virtual " +
      "machines while the scenario ran (this is a shared VM). Nothing here can prevent it; " +
      "runs of one scenario minutes apart varied by ±25 % with it between 2 % and 29 %.",
  );
  for (const failure of failures) notes.push(`- FAILED: ${failure.scenario} (see results.json)`);
  return notes.join("\n");
}

/** Writes bench/results.json. */
export async function writeResults(results: Record<string, unknown>): Promise<void> {
  await Deno.writeTextFile(RESULTS_PATH, `${JSON.stringify(results, null, 2)}\n`);
}
