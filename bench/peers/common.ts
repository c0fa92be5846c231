/**
 * What the peer scenarios (PostgreSQL, Redis) share: the workload's shape, finding or
 * installing a server, CPU use of a generator and of a server, stopping a server
 * gracefully, and turning a recorded history into the checker's row.
 */
import { type CheckerRun, verify } from "../checker.ts";
import { type CpuSample, sampleCpu } from "../cpu.ts";
import { commandOutput, describeExit, type Managed, type Supervisor } from "../procs.ts";
import type { Row } from "../scenarios.ts";

/** The workload of allot's scenario (scenarios.ts) and every peer's: pool, connections, holds. */
export const POOL_SIZE = 10_000;
export const CONNECTIONS = 64;
export const MAX_HOLD_MS = 5;
/**
 * allot's lease in its claim scenarios: far longer than any claim → release loop, so
 * nothing expires, yet much shorter than a run, so a run measures the steady state with
 * whatever lease expiry costs (a delayed queue message per claim once halved it).
 */
export const LEASE_MS = 5_000;

/** Seconds of a peer's second, not-durable measurement: half the main one, at least 3. */
export function secondarySeconds(seconds: number): number {
  return Math.max(3, Math.round(seconds / 2));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export const count = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

/** Whether this run is root (`id -u`: Deno.uid() would need --allow-sys). */
export async function isRoot(sup: Supervisor): Promise<boolean> {
  return (await commandOutput(sup, "id", ["-u"])) === "0";
}

async function aptGet(sup: Supervisor, args: string[]): Promise<boolean> {
  const proc = sup.spawn("apt-get", "apt-get", args, { DEBIAN_FRONTEND: "noninteractive" });
  const status = await proc.done;
  if (!status.success) console.error(`  apt-get ${args.join(" ")}: ${describeExit(proc)}`);
  return status.success;
}

/**
 * Finds a peer's programs with `find`; when they are missing and this run is root,
 * installs `aptPackage` (apt-get update first if the plain install fails) and looks
 * again. Returns null after printing one line saying why the peer is skipped.
 */
export async function findOrInstall<T>(
  sup: Supervisor,
  peer: { name: string; label: string; aptPackage: string },
  find: () => Promise<T | null>,
): Promise<T | null> {
  const found = await find();
  if (found !== null) return found;
  const install = `apt-get install -y ${peer.aptPackage}`;
  if (!(await isRoot(sup))) {
    console.error(
      `skipping ${peer.name}: ${peer.label} is not installed (install it with: sudo ${install})`,
    );
    return null;
  }
  console.error(`  ${peer.name}: ${peer.label} is not installed; running: ${install}`);
  const installArgs = ["install", "-y", "-q", peer.aptPackage];
  const installed = await aptGet(sup, installArgs) ||
    (await aptGet(sup, ["update", "-q"]) && await aptGet(sup, installArgs));
  const after = installed ? await find() : null;
  if (after === null) {
    console.error(`skipping ${peer.name}: could not install ${peer.label} (tried: ${install})`);
  }
  return after;
}

/** Whether `path` is a file this process can see (a program's path, say). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Sends `signal` to a server the run started, waits for it, then makes sure it is gone. */
export async function stopServer(
  sup: Supervisor,
  server: Managed,
  signal: Deno.Signal,
  graceMs = 15_000,
): Promise<void> {
  if (!server.exited) {
    try {
      Deno.kill(server.pid, signal);
    } catch {
      // Exited between the check and the kill.
    }
    await Promise.race([server.done, sleep(graceMs)]);
  }
  await sup.stop(server); // SIGTERM then SIGKILL if the signal did not do it
}

/** Polls `ready` until it is true; fails when the server exits or `timeoutMs` passes. */
export async function waitUntil(
  what: string,
  server: Managed,
  ready: () => Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (server.exited) throw new Error(`${what} not ready: ${describeExit(server)}`);
    if (await ready().catch(() => false)) return;
    await sleep(100);
  }
  throw new Error(`${what} not ready after ${timeoutMs} ms: ${describeExit(server)}`);
}

/** CPU ticks of a process and its descendants (live ones, and the reaped ones it waited for). */
async function treeTicks(sup: Supervisor, rootPid: number): Promise<number | null> {
  const text = await commandOutput(sup, "sh", ["-c", "cat /proc/[0-9]*/stat 2>/dev/null"]);
  if (!text) return null;
  const children = new Map<number, number[]>();
  const ticks = new Map<number, number>();
  for (const line of text.split("\n")) {
    const pid = Number(line.slice(0, line.indexOf(" ")));
    // After "pid (comm) ": state, ppid, …; utime, stime, cutime, cstime are fields 14-17.
    const fields = line.slice(line.lastIndexOf(")") + 2).split(" ").map(Number);
    const ppid = fields[1];
    ticks.set(pid, fields[11] + fields[12] + fields[13] + fields[14]);
    children.set(ppid, [...(children.get(ppid) ?? []), pid]);
  }
  if (!ticks.has(rootPid)) return null;
  let total = 0;
  const stack = [rootPid];
  while (stack.length > 0) {
    const pid = stack.pop()!;
    total += ticks.get(pid) ?? 0;
    stack.push(...(children.get(pid) ?? []));
  }
  return total;
}

/** A moment's CPU counters: the machine's, this run's (with reaped children), a server's tree. */
interface CpuMark {
  machine: CpuSample | null;
  server: number | null;
}

/** CPU used over a generator's run, in cores (1.0 = one core busy the whole time). */
export interface CpuUse {
  /** This run's process and the children it reaped meanwhile: the generator, essentially. */
  generatorCores: number;
  /** The server's process tree. */
  serverCores: number | null;
  /** Every process on the machine (the rest is other work or idle). */
  machineBusyCores: number;
  cores: number;
}

async function cpuMark(sup: Supervisor, server: Managed): Promise<CpuMark> {
  const [machine, serverTicks] = await Promise.all([sampleCpu(sup), treeTicks(sup, server.pid)]);
  return { machine, server: serverTicks };
}

/**
 * Runs `body` (a generator that runs as a child of this run and exits before it
 * returns) and measures the CPU it and the server used meanwhile.
 */
export async function withCpu<T>(
  sup: Supervisor,
  server: Managed,
  body: () => Promise<T>,
): Promise<{ result: T; cpu: CpuUse | null }> {
  const from = await cpuMark(sup, server);
  const result = await body();
  const to = await cpuMark(sup, server);
  if (!from.machine || !to.machine || to.machine.total <= from.machine.total) {
    return { result, cpu: null };
  }
  const cores = navigator.hardwareConcurrency;
  const wallTicks = (to.machine.total - from.machine.total) / cores;
  return {
    result,
    cpu: {
      generatorCores: (to.machine.ours - from.machine.ours) / wallTicks,
      serverCores: from.server !== null && to.server !== null
        ? (to.server - from.server) / wallTicks
        : null,
      machineBusyCores: (to.machine.busy - from.machine.busy) / wallTicks,
      cores,
    },
  };
}

/** "0.45 of 2 cores" for the generator column. */
export function describeGeneratorCpu(cpu: CpuUse | null): string {
  return cpu === null
    ? "CPU not measured"
    : `${cpu.generatorCores.toFixed(2)} of ${cpu.cores} cores`;
}

/** "generator 0.45, server 1.40, machine 1.95 of 2 cores busy" for the notes. */
export function describeCpu(cpu: CpuUse | null): string {
  if (cpu === null) return "CPU not measured";
  const server = cpu.serverCores === null ? "" : `, server ${cpu.serverCores.toFixed(2)}`;
  return `CPU: generator ${cpu.generatorCores.toFixed(2)}${server}, whole machine ` +
    `${cpu.machineBusyCores.toFixed(2)} of ${cpu.cores} cores busy`;
}

/** What a checker row says of the client and its answers (peers report "claimed"/"released"). */
export interface CheckerAnswers {
  /** Statuses that are a grant or a release; any other counts as an error. */
  ok: readonly string[];
  /** What the claim latency spans. */
  latencyOf: string;
}

const PEER_ANSWERS: CheckerAnswers = {
  ok: ["claimed", "released"],
  latencyOf: "claims only (sent → reply read)",
};

/** A recorded history (allot's or a peer's), judged by the checker: its table row. */
export function checkerRow(
  peer: { scenario: string; what: string; generator: string; durable: boolean },
  run: CheckerRun,
  extra: Record<string, unknown> = {},
  answers: CheckerAnswers = PEER_ANSWERS,
): Row {
  const verdict = verify(run);
  const errors = run.transportErrors + Object.entries(run.statuses)
    .filter(([status]) => !answers.ok.includes(status))
    .reduce((sum, [, n]) => sum + n, 0);
  console.error(
    `  ${peer.scenario}: ${count.format(verdict.grants)} grants on ` +
      `${count.format(verdict.slotsUsed)} slots, ${verdict.doubleAllocations} double ` +
      `allocations, ${verdict.fencingViolations} fencing-order violations`,
  );
  return {
    scenario: peer.scenario,
    what: `${peer.what}: independent double-allocation checker`,
    generator: `${peer.generator}, claim → hold 0-${MAX_HOLD_MS} ms → release`,
    concurrency: run.workers,
    poolSize: POOL_SIZE,
    opsPerSec: verdict.claimsPerSec,
    unit: "claims/s",
    p50Ms: verdict.claimP50Ms,
    p99Ms: verdict.claimP99Ms,
    latencyOf: answers.latencyOf,
    doubleAllocations: verdict.doubleAllocations,
    fencingViolations: verdict.fencingViolations,
    errors,
    durable: peer.durable,
    comparedWith: "checker",
    details: {
      ...verdict,
      seconds: run.seconds,
      statuses: run.statuses,
      transportErrors: run.transportErrors,
      samples: run.samples,
      ...extra,
    },
  };
}

/** Parses the last `RESULT {json}` line a child printed. */
export function resultLine<T>(proc: Managed): T {
  const line = proc.stdout().split("\n").findLast((l) => l.startsWith("RESULT "));
  if (!line) throw new Error(`no RESULT line: ${describeExit(proc)}\nstdout:\n${proc.stdout()}`);
  return JSON.parse(line.slice("RESULT ".length));
}
