/**
 * How much of the CPU other work took while the bench ran: every figure here is
 * CPU-bound, so a test suite running beside it lowers them all. The machine's busy
 * ticks come from /proc/stat; the run's own are this process's plus its reaped
 * children's (every server and generator of a scenario is reaped by the time it ends),
 * from /proc/<pid>/stat. Deno wants --allow-all to read /proc; `cat` needs only --allow-run.
 */
import { commandOutput, type Supervisor } from "./procs.ts";

/** Cumulative clock ticks at one moment. */
export interface CpuSample {
  /**
   * All cores, running processes (user, nice, system). Interrupt time is left out: the
   * kernel charges no process for it, and loopback traffic under wrk makes a lot of it.
   */
  busy: number;
  /**
   * Time the hypervisor ran other guests on our virtual cores while we wanted them: on
   * a shared VM, the CPU the run lost to neighbours, which no process here accounts for.
   */
  steal: number;
  total: number;
  /** This process and its reaped children. */
  ours: number;
}

/**
 * The numeric fields of a /proc/<pid>/stat line after "pid (comm) ": state is field 3 of
 * the line, so utime, stime, cutime, cstime (fields 14-17) are at 11-14 here.
 */
function statFields(line: string): number[] {
  return line.slice(line.lastIndexOf(")") + 2).split(" ").map(Number);
}

let userHz: Promise<number> | null = null;

/** The unit of /proc's CPU times, from `getconf CLK_TCK` (Linux's usual 100 if it fails). */
function ticksPerSecond(sup: Supervisor): Promise<number> {
  userHz ??= commandOutput(sup, "getconf", ["CLK_TCK"]).then((out) => {
    const hz = Number(out);
    return Number.isInteger(hz) && hz > 0 ? hz : 100;
  });
  return userHz;
}

/** A child's own CPU seconds so far (user + system, every thread); null when unreadable. */
export async function childCpuSeconds(sup: Supervisor, pid: number): Promise<number | null> {
  const text = await commandOutput(sup, "cat", [`/proc/${pid}/stat`]);
  if (!text) return null;
  const fields = statFields(text);
  return (fields[11] + fields[12]) / await ticksPerSecond(sup);
}

/** Thread names and CPU seconds (user + system) from `/proc/<pid>/task/<tid>/stat` lines. */
export function parseThreadStats(
  text: string,
  ticksPerSecond: number,
): Map<string, { name: string; seconds: number }> {
  const threads = new Map<string, { name: string; seconds: number }>();
  for (const line of text.split("\n")) {
    // A name may hold spaces and parentheses: it runs from the first " (" to the last ")".
    const open = line.indexOf(" (");
    const close = line.lastIndexOf(")");
    if (open < 0 || close < open) continue;
    const fields = statFields(line);
    threads.set(line.slice(0, open), {
      name: line.slice(open + 2, close),
      seconds: (fields[11] + fields[12]) / ticksPerSecond,
    });
  }
  return threads;
}

/** Every thread of process `pid`, keyed by thread id; null when unreadable. */
export async function threadCpuSeconds(
  sup: Supervisor,
  pid: number,
): Promise<Map<string, { name: string; seconds: number }> | null> {
  const text = await commandOutput(sup, "sh", ["-c", `cat /proc/${pid}/task/*/stat`]);
  return text ? parseThreadStats(text, await ticksPerSecond(sup)) : null;
}

/** Reads the machine's and this run's CPU ticks; null where /proc is not there. */
export async function sampleCpu(sup: Supervisor): Promise<CpuSample | null> {
  const text = await commandOutput(sup, "cat", ["/proc/stat", `/proc/${Deno.pid}/stat`]);
  const lines = text?.split("\n") ?? [];
  const cpu = lines.find((line) => line.startsWith("cpu "));
  const own = lines.find((line) => line.startsWith(`${Deno.pid} (`));
  if (!cpu || !own) return null;
  // user nice system idle iowait irq softirq steal (guest time is already in user)
  const ticks = cpu.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = ticks.reduce((sum, n) => sum + n, 0);
  const fields = statFields(own);
  return {
    busy: ticks[0] + ticks[1] + ticks[2],
    steal: ticks[7],
    total,
    ours: fields[11] + fields[12] + fields[13] + fields[14],
  };
}

/** The share (0..1) of all cores that work outside this run kept busy between two samples. */
export function otherShare(from: CpuSample | null, to: CpuSample | null): number | null {
  if (!from || !to || to.total <= from.total) return null;
  const others = (to.busy - from.busy) - (to.ours - from.ours);
  return Math.max(0, others) / (to.total - from.total);
}

/** The share of the CPU other work takes over the next second, while this run idles. */
export async function otherShareNow(sup: Supervisor): Promise<number | null> {
  const from = await sampleCpu(sup);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  return otherShare(from, await sampleCpu(sup));
}

/** The share (0..1) of all cores' time stolen by the hypervisor between two samples. */
export function stealShare(from: CpuSample | null, to: CpuSample | null): number | null {
  if (!from || !to || to.total <= from.total) return null;
  return (to.steal - from.steal) / (to.total - from.total);
}
