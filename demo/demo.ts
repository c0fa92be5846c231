/**
 * `deno task demo`: why allot exists, in about six seconds.
 *
 * 1. The anti-pattern, simulated in this process (clearly not allot): check-then-act
 *    over an eventually consistent view double-allocates under a burst.
 * 2. The same burst as HTTP claims against a real allot server: no slot twice.
 * 3. Queue lag: the server's status consumer is held back, iad's lag passes its
 *    enter threshold and its new claims move to fra; once the consumer catches up,
 *    iad returns. Ends by printing the numbers; exits 1 if allot misbehaved.
 *
 * The server is built here (createApp + a StatusApplier with a fault hook), so
 * main.ts has no fault switch that production configuration could reach.
 */
import { createApp } from "../app.ts";
import { AllotClient, type ClaimGrant, type RegionView, UnavailableError } from "../client.ts";
import { StatusApplier } from "../lib/applier.ts";
import { TokenRegistry } from "../lib/auth.ts";
import { systemClock } from "../lib/clock.ts";
import { handleQueueMessage } from "../lib/queue.ts";
import {
  type AntiPatternResult,
  checkThenAct,
  EventuallyConsistentStore,
  tally,
} from "./antipattern.ts";
import { seededRandom } from "../lib/random.ts";
import { bar, line, n, StatusLine } from "./display.ts";

const CALLERS = 200;
const SLOTS = 100;
const BURST_MS = 1000;
const CONVERGENCE_MS = 300;
const LAG = { enterMs: 1500, exitMs: 300 };
/** How long iad stays in fallback before the consumer is let go. */
const HOLD_FALLBACK_MS = 1500;
/** Longest wait for a mode change before the demo gives up. */
const MODE_TIMEOUT_MS = 8000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// The server's JSON log lines would tear through the progress display: keep them
// for the summary instead.
const serverLogs: string[] = [];
console.log = console.error = (...args: unknown[]) => serverLogs.push(args.join(" "));

/** An allot server on a free port over a :memory: KV, whose status consumer can be held. */
async function startServer() {
  const kv = await Deno.openKv(":memory:");
  let held: PromiseWithResolvers<void> | null = null;
  const applier = new StatusApplier(kv, systemClock, {
    faults: { beforeCommit: () => held?.promise },
  });
  kv.listenQueue(async (message) => {
    await handleQueueMessage({ kv, clock: systemClock, applier }, message);
  });
  const token = {
    admin: crypto.randomUUID(),
    agent: crypto.randomUUID(),
    client: crypto.randomUUID(),
  };
  const tokens = TokenRegistry.from([
    { token: token.admin, role: "admin" },
    { token: token.agent, role: "agent" },
    { token: token.client, role: "client" },
  ]);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    createApp({ kv, tokens }).fetch,
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  return {
    url,
    admin: new AllotClient(url, { token: token.admin }),
    agent: new AllotClient(url, { token: token.agent }),
    client: new AllotClient(url, { token: token.client }),
    /** From now on every status commit waits until releaseConsumer. */
    holdConsumer: () => held = Promise.withResolvers(),
    releaseConsumer: () => held?.resolve(),
    async close() {
      held?.resolve();
      await server.shutdown();
      kv.close();
    },
  };
}
type Server = Awaited<ReturnType<typeof startServer>>;

/** Runs `fn(i)` for `count` callers spread evenly over `durationMs`; waits for all. */
async function paced(
  count: number,
  durationMs: number,
  fn: (i: number) => unknown,
): Promise<void> {
  const started = performance.now();
  const calls: Promise<unknown>[] = [];
  for (let i = 0; i < count; i++) {
    const wait = started + (i * durationMs) / count - performance.now();
    if (wait > 0) await sleep(wait);
    calls.push(Promise.resolve().then(() => fn(i)));
  }
  await Promise.all(calls);
}

function antiPattern(): Promise<AntiPatternResult> {
  line("1. ANTI-PATTERN, simulated in this process (not allot): check-then-act over a cached view");
  line(
    `   ${CALLERS} callers in ${
      BURST_MS / 1000
    } s for ${SLOTS} slots; the view converges every ${CONVERGENCE_MS} ms`,
  );
  const store = new EventuallyConsistentStore(CONVERGENCE_MS);
  const random = seededRandom(7);
  const beliefs = new Map<string, number | null>();
  const status = new StatusLine();
  const show = (t: AntiPatternResult) =>
    `   [${bar(t.callers / CALLERS)}] ${t.callers}/${CALLERS}  told "it's yours" ${t.granted} · ` +
    `slots given twice ${t.doubleAllocated} · silently overwritten ${t.overwritten}`;
  return paced(CALLERS, BURST_MS, (i) => {
    const caller = `caller-${i}`;
    beliefs.set(caller, checkThenAct(store, SLOTS, caller, performance.now(), random));
    status.update(show(tally(store, beliefs)));
  }).then(() => {
    const result = tally(store, beliefs);
    status.done(show(result));
    return result;
  });
}

/** What the allot burst produced. */
interface BurstResult {
  granted: number;
  refused: number;
  doubleAllocated: number;
  claimedAfter: number;
}

async function allotBurst(s: Server): Promise<BurstResult> {
  line();
  line("2. allot: the same burst as HTTP claims (compare-and-swap commits in Deno KV)");
  await s.admin.putRegion("burst");
  await Promise.all(
    Array.from({ length: SLOTS }, (_, i) => s.admin.putResource("burst", `slot-${i}`)),
  );
  const grants: ClaimGrant[] = [];
  let refused = 0;
  const status = new StatusLine();
  const show = () =>
    `   [${bar((grants.length + refused) / CALLERS)}] ${grants.length + refused}/${CALLERS}  ` +
    `granted ${grants.length} · 503 + Retry-After ${refused} · slots given twice ${doubled()}`;
  const doubled = () =>
    grants.length - new Set(grants.map((g) => `${g.servedBy}/${g.resource}/${g.slot}`)).size;
  await paced(CALLERS, BURST_MS, async (i) => {
    try {
      grants.push(await s.client.claim("burst", { holder: `caller-${i}` }));
    } catch (error) {
      if (!(error instanceof UnavailableError)) throw error;
      refused++;
    }
    status.update(show());
  });
  status.done(show());
  const { claimed } = await s.admin.region("burst");
  return { granted: grants.length, refused, doubleAllocated: doubled(), claimedAfter: claimed };
}

/** What the lag phase showed. */
interface LagResult {
  fallbackAfterMs: number;
  primaryAfterMs: number;
  servedBy: Record<string, number>;
  history: string[];
}

const SPARKS = "▁▂▃▄▅▆▇█";

async function lagAndFallback(s: Server): Promise<LagResult> {
  line();
  line("3. Queue lag: iad's status consumer is held back (a fault hook built in this demo)");
  line(
    `   iad falls back to fra above ${n(LAG.enterMs)} ms of lag, returns below ${n(LAG.exitMs)} ms`,
  );
  await s.admin.putRegion("fra", { lag: LAG });
  await s.admin.putRegion("iad", { backup: "fra", lag: LAG });
  for (const region of ["iad", "fra"]) {
    for (let i = 0; i < 10; i++) await s.admin.putResource(region, `${region}-${i}`);
  }

  let running = true;
  let seq = 0;
  const servedBy: Record<string, number> = {};
  let lastServedBy = "iad";
  const agents = (async () => {
    while (running) {
      seq++;
      const updates = Array.from({ length: 10 }, (_, i) => ({
        resource: `iad-${i}`,
        seq,
        state: "ready" as const,
        load: Math.round(Math.random() * 100) / 100,
      }));
      await s.agent.reportStatus("iad", updates);
      await sleep(100);
    }
  })();
  const clients = (async () => {
    while (running) {
      const grant = await s.client.claim("iad", { holder: "demo-client" });
      servedBy[grant.servedBy] = (servedBy[grant.servedBy] ?? 0) + 1;
      lastServedBy = grant.servedBy;
      await s.client.release(grant);
      await sleep(200);
    }
  })();

  const lags: number[] = [];
  /** Polls iad, redrawing one status line, until `done(region, ms waited)`; ms waited. */
  const watch = async (done: (region: RegionView, waited: number) => boolean) => {
    const status = new StatusLine();
    const from = performance.now();
    for (;;) {
      const region = await s.admin.region("iad");
      lags.push(region.lagMs);
      const spark = lags.slice(-40).map((lag) =>
        SPARKS[Math.min(7, Math.floor((lag / (LAG.enterMs * 2)) * 8))]
      ).join("");
      status.update(
        `   iad lag ${spark.padEnd(40)} ${n(region.lagMs).padStart(6)} ms · ${region.mode} · ` +
          `last claim served by ${lastServedBy}`,
      );
      const waited = performance.now() - from;
      if (done(region, waited)) {
        status.done();
        return waited;
      }
      if (waited > MODE_TIMEOUT_MS) {
        throw new Error(`iad did not change mode in ${MODE_TIMEOUT_MS} ms`);
      }
      await sleep(100);
    }
  };
  try {
    s.holdConsumer();
    const fallbackAfterMs = await watch((region) => region.mode === "fallback");
    line(`   → iad entered fallback after ${n(Math.round(fallbackAfterMs))} ms of held consumer`);
    await watch((_region, waited) => waited >= HOLD_FALLBACK_MS);
    s.releaseConsumer();
    line("   → consumer released");
    const primaryAfterMs = await watch((region) => region.mode === "primary");
    line(`   → iad back to primary ${n(Math.round(primaryAfterMs))} ms after the release`);
    const history = (await s.admin.region("iad")).modeHistory.map((change) =>
      `${change.at.slice(11, 23)}  ${change.from} → ${change.to}  (${change.reason})`
    );
    return { fallbackAfterMs, primaryAfterMs, servedBy, history };
  } finally {
    running = false;
    s.releaseConsumer();
    await Promise.all([agents, clients]);
  }
}

async function main(): Promise<number> {
  const started = performance.now();
  const s = await startServer();
  line(`allot demo · server ${s.url} (in-process, :memory: KV)`);
  line();
  try {
    const anti = await antiPattern();
    const burst = await allotBurst(s);
    const lag = await lagAndFallback(s);
    line();
    line("Numbers");
    line(
      `  anti-pattern (simulated): ${anti.callers} callers, ${anti.granted} told "it's yours", ` +
        `${anti.doubleAllocated} slots given to two or more, ${anti.overwritten} callers silently overwritten`,
    );
    line(
      `  allot over HTTP:          ${CALLERS} claims, ${burst.granted} granted, ${burst.refused} answered ` +
        `503 + Retry-After, ${burst.doubleAllocated} slots given twice (region reports ${burst.claimedAfter} claimed)`,
    );
    const fallbackMs = n(Math.round(lag.fallbackAfterMs));
    const primaryMs = n(Math.round(lag.primaryAfterMs));
    const served = Object.entries(lag.servedBy).map(([region, count]) => `${count} by ${region}`);
    line(
      `  fallback:                 entered ${fallbackMs} ms into the lag (enterMs ${
        n(LAG.enterMs)
      }), ` +
        `back to primary ${primaryMs} ms after the consumer was released`,
    );
    line(`  claims during phase 3:    served ${served.join(", ")}`);
    line("  iad's mode history (GET /v1/regions/iad):");
    for (const change of lag.history) line(`    ${change}`);
    const modeLogs = serverLogs.filter((l) => l.includes('"region mode changed"')).length;
    line(
      `  server log: ${modeLogs} "region mode changed" lines, ${serverLogs.length} lines in all`,
    );
    line(`  took ${((performance.now() - started) / 1000).toFixed(1)} s`);
    const ok = burst.doubleAllocated === 0 && burst.granted === burst.claimedAfter &&
      (lag.servedBy.fra ?? 0) > 0;
    return ok ? 0 : 1;
  } finally {
    await s.close();
  }
}

Deno.exitCode = await main();
