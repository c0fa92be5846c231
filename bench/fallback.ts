/**
 * Scenario 6 of the issue: fallback. allot as main.ts builds it, plus a lag control
 * only the bench has (bench/fallback_server.ts): region `iad` (backup `fra`) gets a
 * steady trickle of status updates whose commits the control holds back, so iad's lag
 * goes where the bench says, while a client claims (and releases) on iad and a poller
 * reads iad's health at a steady rate. Measured:
 *
 * - switch delay: the `fallback` entry's time in iad's modeHistory minus the moment
 *   the lag crossed enterMs (the oldest pending update's enqueue time + enterMs), over
 *   several hold → fallback → release → primary cycles;
 * - flaps: mode changes while the lag oscillates between exitMs and enterMs for N
 *   cycles, once in primary mode and once in fallback (none should happen), and mode
 *   changes beyond the two each switch cycle should make.
 */
import { assertRunning, serverStderr, sleep, startAllot, TOKENS, withAllot } from "./harness.ts";
import type { AllotServer } from "./harness.ts";
import type { BenchContext, Row } from "./scenarios.ts";
import { getRegion, putRegion, type RegionHealth, seedThroughStatus } from "./seed.ts";
import { percentile } from "./stats.ts";

const REGION = "iad";
const BACKUP = "fra";
const LAG = { enterMs: 1000, exitMs: 300 } as const;
/** The oscillation's low and high lag targets: inside the band, 20% of it from each edge. */
const BAND = {
  lo: LAG.exitMs + 0.2 * (LAG.enterMs - LAG.exitMs),
  hi: LAG.enterMs - 0.2 * (LAG.enterMs - LAG.exitMs),
} as const;
const POOL_PER_REGION = 100;
/** The agent reports this many resources every AGENT_MS. */
const AGENT_UPDATES = 10;
const AGENT_MS = 50;
const CLAIM_MS = 100;
const POLL_MS = 100;
/** Time at each end of an oscillation before turning. */
const DWELL_MS = 200;
const MODE_TIMEOUT_MS = 10_000;
/** The issue's targets. */
const TARGET_SWITCH_MS = 1000;

const count = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

interface Poll {
  at: number;
  lagMs: number;
  mode: string;
}

/** One hold → fallback → release → primary cycle. */
interface SwitchCycle {
  /** The fallback entry's time minus (oldest pending enqueue time + enterMs), ms. */
  switchDelayMs: number;
  /** The lag the server recorded with the change. */
  lagAtSwitchMs: number;
  /** From releasing the consumer to the primary entry, ms. */
  backToPrimaryMs: number;
}

/** One oscillation phase: its time window and what the lag did in it. */
interface BandPhase {
  mode: string;
  cycles: number;
  from: number;
  to: number;
  lagMinMs: number | null;
  lagMaxMs: number | null;
  /** Mode changes recorded in modeHistory inside the window. */
  changes: number;
}

/** The load that runs throughout: agent, claiming client, health poller. */
class SteadyLoad {
  polls: Poll[] = [];
  servedBy: Record<string, number> = {};
  statuses: Record<string, number> = {};
  /** Calls that threw: no answer, or a health read answered other than 200. */
  failedCalls = 0;
  #running = true;
  #loops: Promise<void>[];
  #seq = 1; // the seed used seq 1

  constructor(private readonly allot: AllotServer) {
    this.#loops = [
      this.#every(AGENT_MS, () => this.#report()),
      this.#every(CLAIM_MS, () => this.#claim()),
      this.#every(POLL_MS, () => this.#poll()),
    ];
  }

  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#loops);
  }

  /** The latest poll. */
  get last(): Poll | undefined {
    return this.polls.at(-1);
  }

  async #every(ms: number, step: () => Promise<void>): Promise<void> {
    while (this.#running) {
      const started = performance.now();
      try {
        await step();
      } catch {
        this.failedCalls++;
      }
      await sleep(Math.max(0, started + ms - performance.now()));
    }
  }

  #note(kind: string, status: number): void {
    const key = `${kind} ${status}`;
    this.statuses[key] = (this.statuses[key] ?? 0) + 1;
  }

  async #report(): Promise<void> {
    const seq = ++this.#seq;
    const updates = Array.from({ length: AGENT_UPDATES }, (_, i) => ({
      resource: `${REGION}-${String(i).padStart(6, "0")}`,
      seq,
      state: "ready",
      load: Math.random(),
    }));
    const res = await fetch(`${this.allot.baseUrl}/v1/regions/${REGION}/status`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKENS.agent}`, "content-type": "application/json" },
      body: JSON.stringify({ updates }),
    });
    await res.body?.cancel();
    this.#note("status", res.status);
  }

  async #claim(): Promise<void> {
    const res = await fetch(`${this.allot.baseUrl}/v1/regions/${REGION}/claims`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKENS.client}`, "content-type": "application/json" },
      body: JSON.stringify({ holder: "bench-fallback" }),
    });
    this.#note("claim", res.status);
    if (res.status !== 201) {
      await res.body?.cancel();
      return;
    }
    const grant = await res.json();
    this.servedBy[grant.servedBy] = (this.servedBy[grant.servedBy] ?? 0) + 1;
    const released = await fetch(`${this.allot.baseUrl}/v1/claims/${grant.id}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${TOKENS.client}`, "allot-claim-secret": grant.secret },
    });
    await released.body?.cancel();
    this.#note("release", released.status);
  }

  async #poll(): Promise<void> {
    const at = Date.now();
    const { lagMs, mode } = await getRegion(this.allot.admin, REGION);
    this.polls.push({ at, lagMs, mode });
  }

  /** Waits until a poll after now satisfies `done`. */
  async until(what: string, done: (poll: Poll) => boolean): Promise<Poll> {
    const from = Date.now();
    for (;;) {
      const poll = this.last;
      if (poll && poll.at >= from && done(poll)) return poll;
      if (Date.now() - from > MODE_TIMEOUT_MS) {
        throw new Error(
          `${REGION}: ${what} not seen in ${MODE_TIMEOUT_MS} ms (last: ` +
            `${JSON.stringify(poll)})`,
        );
      }
      await sleep(POLL_MS / 4);
    }
  }
}

async function benchCall(allot: AllotServer, method: string, path: string, body?: unknown) {
  const res = await fetch(`${allot.baseUrl}/bench/${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKENS.admin}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} /bench/${path}: ${res.status} ${await res.text()}`);
  return res.status === 204 ? null : await res.json();
}

const setLag = (allot: AllotServer, target: number | "hold") =>
  benchCall(
    allot,
    "PUT",
    `lag/${REGION}`,
    target === "hold" ? { hold: true } : { targetMs: target },
  );

function changesBetween(health: RegionHealth, from: number, to: number) {
  return health.modeHistory.filter((c) => {
    const at = Date.parse(c.at);
    return at >= from && at <= to;
  });
}

/** Hold → fallback (switch delay measured while still held) → release → primary. */
async function switchCycle(allot: AllotServer, load: SteadyLoad): Promise<SwitchCycle> {
  await setLag(allot, "hold");
  await load.until("fallback", (p) => p.mode === "fallback");
  // Nothing of iad is applied while held: its oldest pending update is the one whose
  // age crossed enterMs.
  const { enqueuedAt } = await benchCall(allot, "GET", `oldest/${REGION}`);
  const health = await getRegion(allot.admin, REGION);
  const entry = health.modeHistory.findLast((c) => c.to === "fallback");
  if (!entry || enqueuedAt === null) {
    throw new Error(`no fallback entry or no pending update: ${JSON.stringify(health)}`);
  }
  const released = Date.now();
  await setLag(allot, 0);
  await load.until("primary", (p) => p.mode === "primary");
  const back = (await getRegion(allot.admin, REGION)).modeHistory.findLast((c) =>
    c.to === "primary"
  );
  return {
    switchDelayMs: Date.parse(entry.at) - (enqueuedAt + LAG.enterMs),
    lagAtSwitchMs: entry.lagMs,
    backToPrimaryMs: back ? Date.parse(back.at) - released : NaN,
  };
}

/** Oscillates the lag between BAND.lo and BAND.hi `cycles` times, in whatever mode. */
async function oscillate(allot: AllotServer, load: SteadyLoad, cycles: number) {
  for (let i = 0; i < cycles; i++) {
    await setLag(allot, BAND.hi);
    await load.until(`lag ≥ ${BAND.hi - 60} ms`, (p) => p.lagMs >= BAND.hi - 60);
    await sleep(DWELL_MS);
    await setLag(allot, BAND.lo);
    await load.until(`lag ≤ ${BAND.lo + 100} ms`, (p) => p.lagMs <= BAND.lo + 100);
    await sleep(DWELL_MS);
  }
}

/** Oscillation in the mode the region is in; the window starts once the lag is in the band. */
async function bandPhase(allot: AllotServer, load: SteadyLoad, cycles: number) {
  const mode = load.last?.mode ?? "unknown";
  await setLag(allot, BAND.lo);
  await load.until("lag in the band", (p) => p.lagMs > LAG.exitMs && p.lagMs < LAG.enterMs);
  const from = Date.now();
  await oscillate(allot, load, cycles);
  const to = Date.now();
  const lags = load.polls.filter((p) => p.at >= from && p.at <= to).map((p) => p.lagMs);
  return { mode, cycles, from, to, lags };
}

/** Scenario 6: time to switch to the backup, and no flapping under an oscillating lag. */
export async function fallbackScenario(ctx: BenchContext): Promise<Row[]> {
  const allot = await startAllot(ctx, "fallback", "bench/fallback_server.ts");
  return await withAllot(ctx, allot, async () => {
    await putRegion(allot.admin, BACKUP, { lag: LAG });
    await putRegion(allot.admin, REGION, { backup: BACKUP, lag: LAG });
    await seedThroughStatus(allot.admin, BACKUP, POOL_PER_REGION, `${BACKUP}-`);
    await seedThroughStatus(allot.admin, REGION, POOL_PER_REGION, `${REGION}-`);
    const quick = ctx.seconds < 10;
    const cycles = quick ? 2 : 5;
    const switches = quick ? 1 : 3;
    const started = Date.now();
    const load = new SteadyLoad(allot);
    const cyclesRun: SwitchCycle[] = [];
    const bands: Omit<BandPhase, "changes" | "lagMinMs" | "lagMaxMs">[] = [];
    const bandLags: number[][] = [];
    try {
      await load.until("primary", (p) => p.mode === "primary");
      console.error(
        `  fallback: lag oscillating ${BAND.lo}-${BAND.hi} ms in primary, ${cycles} cycles`,
      );
      const primary = await bandPhase(allot, load, cycles);
      console.error(`  fallback: ${switches} hold → fallback → release cycles`);
      await setLag(allot, "hold");
      await load.until("fallback", (p) => p.mode === "fallback");
      console.error(
        `  fallback: lag oscillating ${BAND.lo}-${BAND.hi} ms in fallback, ${cycles} cycles`,
      );
      const fallback = await bandPhase(allot, load, cycles);
      await setLag(allot, 0);
      await load.until("primary", (p) => p.mode === "primary");
      for (let i = 0; i < switches; i++) {
        cyclesRun.push(await switchCycle(allot, load));
        assertRunning(allot);
      }
      for (const phase of [primary, fallback]) {
        const { lags, ...rest } = phase;
        bands.push(rest);
        bandLags.push(lags);
      }
    } finally {
      await load.stop();
    }
    const ended = Date.now();
    const health = await getRegion(allot.admin, REGION);
    const phases: BandPhase[] = bands.map((band, i) => ({
      ...band,
      lagMinMs: bandLags[i].length > 0 ? Math.min(...bandLags[i]) : null,
      lagMaxMs: bandLags[i].length > 0 ? Math.max(...bandLags[i]) : null,
      changes: changesBetween(health, band.from, band.to).length,
    }));
    // Expected: one change into fallback and one back for the switch into the fallback
    // band phase, and two per switch cycle. Anything more is a flap.
    const recorded = changesBetween(health, started, ended).length;
    const polledChanges = load.polls.slice(1).filter((p, i) => p.mode !== load.polls[i].mode)
      .length;
    const expected = 2 + 2 * switches;
    const changes = Math.max(recorded, polledChanges);
    const flaps = Math.max(changes - expected, phases.reduce((sum, p) => sum + p.changes, 0));
    const delays = cyclesRun.map((c) => c.switchDelayMs);
    const worst = Math.max(...delays);
    const errors = Object.entries(load.statuses)
      .filter(([key]) => !["status 202", "claim 201", "release 204"].includes(key))
      .reduce((sum, [, n]) => sum + n, load.failedCalls);
    const bandsText = phases.map((p) =>
      `in ${p.mode}: ${p.cycles} cycles, lag ${count.format(p.lagMinMs ?? 0)}-${
        count.format(p.lagMaxMs ?? 0)
      } ms, ${p.changes} mode changes`
    ).join("; ");
    return [{
      scenario: "fallback",
      what: `allot fallback ${REGION} → ${BACKUP} (main.ts's app + a bench-only lag control), ` +
        `enterMs ${LAG.enterMs}, exitMs ${LAG.exitMs}`,
      generator: `Deno fetch: claim+release every ${CLAIM_MS} ms, health every ${POLL_MS} ms, ` +
        `${AGENT_UPDATES} updates every ${AGENT_MS} ms`,
      concurrency: 3,
      poolSize: POOL_PER_REGION,
      opsPerSec: worst / 1000,
      unit: "s switch delay",
      figure: `switch ${(worst / 1000).toFixed(3)} s after the crossing (worst of ${switches}); ` +
        `${flaps} flaps in ${2 * cycles} oscillations`,
      p50Ms: percentile(delays, 50),
      p99Ms: worst,
      latencyOf: "switch delay: fallback entry − (oldest pending enqueue + enterMs); p99 = worst",
      doubleAllocations: null,
      fencingViolations: null,
      errors,
      durable: true,
      comparedWith: null,
      targets: [
        { target: `switch ≤ ${TARGET_SWITCH_MS / 1000} s`, met: worst <= TARGET_SWITCH_MS },
        { target: "0 flaps", met: flaps === 0 },
      ],
      note: `switch delays ${delays.map((d) => `${count.format(d)} ms`).join(", ")} ` +
        `(lag recorded at the switch ${
          cyclesRun.map((c) => `${count.format(c.lagAtSwitchMs)} ms`).join(", ")
        }; back to primary ${
          cyclesRun.map((c) => `${count.format(c.backToPrimaryMs)} ms`).join(", ")
        } after the release). Oscillation ${bandsText}. ${changes} mode changes in all ` +
        `(${expected} expected); claims served by ${JSON.stringify(load.servedBy)}; answers ` +
        `${JSON.stringify(load.statuses)}.`,
      details: {
        lag: LAG,
        band: BAND,
        cycles: cyclesRun,
        phases,
        flaps,
        modeChanges: { recorded, polled: polledChanges, expected },
        servedBy: load.servedBy,
        statuses: load.statuses,
        failedCalls: load.failedCalls,
        modeHistory: health.modeHistory,
        serverStderr: serverStderr(allot),
      },
    }];
  });
}
