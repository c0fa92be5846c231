/**
 * Where allot's server spends its CPU under the bench's claim → release load:
 *
 *   deno task profile [--seconds=10]
 *
 * Starts allot (bench/profile_server.ts: main.ts under V8's sampling profiler) on a
 * file-backed KV in a temp dir, seeds the bench pool as `deno task bench` does, warms up,
 * then runs the same wrk load while V8 samples the JS thread and /proc gives every server
 * thread's CPU. Prints the load's figures, each thread's share of a core (the JS thread,
 * Deno KV's SQLite thread, V8's GC helpers...), the machine's busy and stolen shares, and
 * the JS thread's self time by module and by function. The `.cpuprofile` stays in
 * bench/tmp/profiles/ for Chrome DevTools.
 */
import { parseArgs } from "node:util";
import { sampleCpu, stealShare, threadCpuSeconds } from "./cpu.ts";
import { assertRunning, sleep, startAllot, withAllot } from "./harness.ts";
import { REPO_ROOT, Supervisor } from "./procs.ts";
import {
  type CpuProfile,
  percent,
  shareTable,
  summarizeProfile,
  threadShares,
} from "./profile_report.ts";
import { allotTarget, type BenchContext, seedAllot, wrkLoad } from "./scenarios.ts";
import { describeLoad, runWrk } from "./wrk.ts";

const PROFILES_DIR = `${REPO_ROOT}bench/tmp/profiles`;
const WARMUP_SECONDS = 3;
/** Longest wait for the server to write its profile after SIGUSR2. */
const WRITE_TIMEOUT_MS = 30_000;

async function waitForFile(path: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      await Deno.stat(path);
      return;
    } catch {
      await sleep(100);
    }
  }
  throw new Error(`no profile at ${path} after ${timeoutMs} ms`);
}

async function main(seconds: number): Promise<void> {
  const sup = new Supervisor();
  try {
    const ctx: BenchContext = { sup, seconds, checkerSeconds: 0, warmupSeconds: WARMUP_SECONDS };
    await Deno.mkdir(PROFILES_DIR, { recursive: true });
    const out = `${PROFILES_DIR}/allot-${new Date().toISOString().replaceAll(":", "-")}.cpuprofile`;
    const allot = await startAllot(ctx, "profile-allot", "bench/profile_server.ts", {
      PROFILE_OUT: out,
    });
    const pid = allot.server.pid;
    const measured = await withAllot(ctx, allot, async () => {
      console.error(`seeding allot (pid ${pid})`);
      await seedAllot(allot.baseUrl);
      const target = allotTarget(allot.baseUrl);
      await runWrk(sup, target, wrkLoad(WARMUP_SECONDS));
      Deno.kill(pid, "SIGUSR1");
      const [machineFrom, threadsFrom] = [await sampleCpu(sup), await threadCpuSeconds(sup, pid)];
      const started = performance.now();
      console.error(`profiling under ${describeLoad(wrkLoad(seconds))} for ${seconds} s`);
      const wrk = await runWrk(sup, target, wrkLoad(seconds));
      const threadsTo = await threadCpuSeconds(sup, pid);
      const window = (performance.now() - started) / 1000;
      const machineTo = await sampleCpu(sup);
      Deno.kill(pid, "SIGUSR2");
      await waitForFile(out, WRITE_TIMEOUT_MS);
      assertRunning(allot);
      const machine = machineFrom && machineTo && machineTo.total > machineFrom.total
        ? (machineTo.busy - machineFrom.busy) / (machineTo.total - machineFrom.total)
        : null;
      return {
        wrk,
        threads: threadsFrom && threadsTo ? threadShares(threadsFrom, threadsTo, window) : null,
        machine,
        steal: stealShare(machineFrom, machineTo),
      };
    });
    const { wrk, threads, machine, steal } = measured;
    const profile = summarizeProfile(JSON.parse(await Deno.readTextFile(out)) as CpuProfile);
    const loops = wrk.releases / wrk.seconds;
    console.log([
      `## allot under ${describeLoad(wrkLoad(seconds))}, claim → release, ${seconds} s`,
      "",
      `${Math.round(loops)} claim loops/s; p50 ${wrk.latencyMs.p50.toFixed(1)} ms, p99 ${
        wrk.latencyMs.p99.toFixed(1)
      } ms; statuses ${JSON.stringify(wrk.statuses)}. The machine was ${
        machine === null ? "?" : percent(machine)
      } busy (all cores, wrk included) and lost ${steal === null ? "?" : percent(steal)} to steal.`,
      "",
      threads === null
        ? "Thread CPU: /proc unreadable."
        : shareTable("server thread", threads, "of one core"),
      "",
      `JS thread: ${profile.samples} samples, busy in ${percent(profile.busy)} of them.`,
      "",
      shareTable("JS thread self time, by module", profile.modules, "of busy samples"),
      "",
      shareTable("JS thread self time, by function", profile.functions, "of busy samples"),
      "",
      `Profile: ${out}`,
    ].join("\n"));
  } finally {
    await sup.close();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { seconds: { type: "string", default: "10" } },
    strict: true,
  });
  const seconds = Number(values.seconds);
  if (!Number.isInteger(seconds) || seconds < 1) {
    console.error(`--seconds takes a whole number of seconds (got "${values.seconds}")`);
    Deno.exit(2);
  }
  await main(seconds);
}
