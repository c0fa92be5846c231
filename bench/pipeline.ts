/**
 * Scenario 5 of the issue: the status pipeline. The real server (main.ts, file-backed
 * KV) with a 10,000-resource region; a Deno client posts batches of 500 load updates
 * (increasing seq) at an offered rate, open loop, in steps up to the target rate; a
 * sampler reads the region's `lagMs` every 100 ms; GET /v1/stats before and after each
 * step gives the updates applied and the commits they took. A 503 (backlog bound) is
 * counted, not retried.
 */
import {
  applyCounters,
  assertRunning,
  kbToMb,
  readMemory,
  serverStderr,
  sleep,
  startAllot,
  TOKENS,
  withAllot,
} from "./harness.ts";
import type { BenchContext, Row } from "./scenarios.ts";
import { getRegion, putRegion, resourceId, seedThroughStatus } from "./seed.ts";
import { percentile } from "./stats.ts";

const REGION = "bench";
const POOL_SIZE = 10_000;
/** Updates per status request. */
const BATCH = 500;
/** Requests in flight at most; past it the sender waits (and offers less). */
const MAX_IN_FLIGHT = 16;
const SAMPLE_MS = 100;
/** The issue's targets. */
const TARGET_RATE = 20_000;
const TARGET_LAG_P99_MS = 2000;
const TARGET_PER_COMMIT = 50;
/** Offered rates, updates/s, lowest first; the last is the target. */
const FULL_STEPS = [5000, 10_000, TARGET_RATE, 25_000, 30_000, 40_000];
const QUICK_STEPS = [1250, TARGET_RATE];
/** How long a step's accepted updates may take to be applied after the step before it fails. */
const DRAIN_LIMIT_MS = 5000;

/** One step of offered load and what the server did with it. */
interface StepResult {
  offeredRate: number;
  seconds: number;
  /** Updates sent per second (below the offered rate if the sender had to wait). */
  sentPerSec: number;
  acceptedPerSec: number;
  /** Updates applied while the step ran, per second of the step. */
  appliedPerSec: number;
  /**
   * The step's accepted updates ÷ the time from its start until the last of them was
   * applied (null if that took past DRAIN_LIMIT_MS): the rate the pipeline sustained.
   */
  sustainedPerSec: number | null;
  updatesPerCommit: number | null;
  statuses: Record<string, number>;
  transportErrors: number;
  lagP50Ms: number | null;
  lagP99Ms: number | null;
  lagMaxMs: number | null;
  pendingAtEnd: number;
  /** Updates the queue gave up on (dead-lettered), in all, at the step's end. */
  deadLetteredAtEnd: number;
  /** Lag p99 under the target, no 503, and under a second of offered load pending at the end. */
  keptUp: boolean;
}

interface Sample {
  at: number;
  lagMs: number;
  pending: number;
  deadLettered: number;
}

const count = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

/** A batch of load updates over a window of the pool, all with one new seq. */
function batchBody(batch: number, seq: number): string {
  const from = (batch * BATCH) % POOL_SIZE;
  const updates = Array.from({ length: BATCH }, (_, k) => ({
    resource: resourceId("r-", (from + k) % POOL_SIZE),
    seq,
    state: "ready",
    load: k / BATCH,
  }));
  return JSON.stringify({ updates });
}

/** Drives the pipeline step by step, sampling the lag throughout. */
class PipelineRun {
  #seq = 1; // the seed used seq 1
  #batch = 0;
  samples: Sample[] = [];
  #sampling = true;
  #sampler: Promise<void>;

  constructor(private readonly baseUrl: string) {
    this.#sampler = this.#sample();
  }

  async #sample(): Promise<void> {
    while (this.#sampling) {
      const at = performance.now();
      try {
        const { lagMs, pending, deadLettered } = await getRegion(
          { baseUrl: this.baseUrl, token: TOKENS.admin },
          REGION,
        );
        this.samples.push({ at, lagMs, pending, deadLettered });
      } catch {
        // A missed sample; the step's errors come from the sender.
      }
      await sleep(Math.max(0, at + SAMPLE_MS - performance.now()));
    }
  }

  async stop(): Promise<void> {
    this.#sampling = false;
    await this.#sampler;
  }

  /** Offers `rate` updates/s for `seconds`; returns what was sent and answered. */
  async offer(rate: number, seconds: number) {
    const statuses: Record<string, number> = {};
    let transportErrors = 0;
    let sent = 0;
    const inFlight = new Set<Promise<void>>();
    const started = performance.now();
    const end = started + seconds * 1000;
    const intervalMs = (1000 * BATCH) / rate;
    for (let i = 0;; i++) {
      const due = started + i * intervalMs;
      if (due >= end) break;
      await sleep(Math.max(0, due - performance.now()));
      while (inFlight.size >= MAX_IN_FLIGHT) await Promise.race(inFlight);
      if (performance.now() >= end) break;
      const body = batchBody(this.#batch++, ++this.#seq);
      sent += BATCH;
      const request = fetch(`${this.baseUrl}/v1/regions/${REGION}/status`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKENS.agent}`, "content-type": "application/json" },
        body,
      }).then(async (res) => {
        await res.body?.cancel();
        statuses[res.status] = (statuses[res.status] ?? 0) + 1;
      }, () => {
        transportErrors++;
      }).finally(() => inFlight.delete(request));
      inFlight.add(request);
    }
    await Promise.all(inFlight);
    // The window is the step; a late sender (in-flight bound) stretches it.
    const elapsed = (performance.now() - started) / 1000;
    return { sent, statuses, transportErrors, seconds: Math.max(seconds, elapsed) };
  }
}

async function runStep(
  run: PipelineRun,
  allot: Parameters<typeof applyCounters>[0],
  rate: number,
  seconds: number,
): Promise<StepResult> {
  const before = await applyCounters(allot);
  const from = performance.now();
  const offered = await run.offer(rate, seconds);
  const to = performance.now();
  const after = await applyCounters(allot);
  const accepted = (offered.statuses["202"] ?? 0) * BATCH;
  let drainedAt: number | null = null;
  while (performance.now() < to + DRAIN_LIMIT_MS) {
    if ((await applyCounters(allot)).updates - before.updates >= accepted) {
      drainedAt = performance.now();
      break;
    }
    await sleep(25);
  }
  const lags = run.samples.filter((s) => s.at >= from && s.at < to).map((s) => s.lagMs);
  const last = run.samples.filter((s) => s.at < to).at(-1);
  const updates = after.updates - before.updates;
  const commits = after.commits - before.commits;
  const lagP99Ms = percentile(lags, 99);
  const result: StepResult = {
    offeredRate: rate,
    seconds: offered.seconds,
    sentPerSec: offered.sent / offered.seconds,
    acceptedPerSec: accepted / offered.seconds,
    appliedPerSec: updates / offered.seconds,
    sustainedPerSec: drainedAt === null ? null : accepted / ((drainedAt - from) / 1000),
    updatesPerCommit: commits > 0 ? updates / commits : null,
    statuses: offered.statuses,
    transportErrors: offered.transportErrors,
    lagP50Ms: percentile(lags, 50),
    lagP99Ms,
    lagMaxMs: lags.length > 0 ? Math.max(...lags) : null,
    pendingAtEnd: last?.pending ?? 0,
    deadLetteredAtEnd: last?.deadLettered ?? 0,
    keptUp: false,
  };
  result.keptUp = lagP99Ms !== null && lagP99Ms < TARGET_LAG_P99_MS &&
    (offered.statuses["503"] ?? 0) === 0 && offered.transportErrors === 0 &&
    result.pendingAtEnd <= rate && result.sustainedPerSec !== null;
  return result;
}

function stepErrors(step: StepResult): number {
  return Object.entries(step.statuses)
    .filter(([status]) => status !== "202")
    .reduce((sum, [, n]) => sum + n, step.transportErrors);
}

function describeStep(step: StepResult): string {
  const lag = (ms: number | null) => ms === null ? "—" : `${(ms / 1000).toFixed(2)} s`;
  return `offered ${count.format(step.offeredRate)}/s (sent ${count.format(step.sentPerSec)}/s): ` +
    `accepted ${count.format(step.acceptedPerSec)}/s, applied ${
      count.format(step.appliedPerSec)
    }/s during the step, sustained ${
      step.sustainedPerSec === null ? "—" : `${count.format(step.sustainedPerSec)}/s`
    }, ` +
    `${step.updatesPerCommit === null ? "—" : step.updatesPerCommit.toFixed(1)} per commit, ` +
    `lag p50/p99/max ${lag(step.lagP50Ms)}/${lag(step.lagP99Ms)}/${lag(step.lagMaxMs)}, ` +
    `${count.format(step.pendingAtEnd)} pending and ${step.deadLetteredAtEnd} dead-lettered ` +
    `at its end, answers ${JSON.stringify(step.statuses)}` +
    (step.transportErrors > 0 ? `, ${step.transportErrors} transport errors` : "");
}

function pipelineRow(
  scenario: string,
  what: string,
  step: StepResult,
  extra: Partial<Row>,
  details: Record<string, unknown>,
): Row {
  return {
    scenario,
    what,
    generator: `Deno fetch, open loop, ${BATCH}-update batches, ≤ ${MAX_IN_FLIGHT} in flight`,
    concurrency: MAX_IN_FLIGHT,
    poolSize: POOL_SIZE,
    opsPerSec: step.appliedPerSec,
    unit: "updates/s applied",
    p50Ms: step.lagP50Ms,
    p99Ms: step.lagP99Ms,
    latencyOf: `queue lag (the region's lagMs, read every ${SAMPLE_MS} ms)`,
    doubleAllocations: null,
    fencingViolations: null,
    errors: stepErrors(step),
    durable: true,
    comparedWith: null,
    details,
    ...extra,
  };
}

/** Scenario 5: sustained status updates through HTTP, their lag and their batching. */
export async function pipelineScenario(ctx: BenchContext): Promise<Row[]> {
  const allot = await startAllot(ctx, "pipeline", "main.ts");
  return await withAllot(ctx, allot, async () => {
    await putRegion(allot.admin, REGION, {});
    console.error(`  pipeline: seeding ${POOL_SIZE} resources through status batches`);
    const seed = await seedThroughStatus(allot.admin, REGION, POOL_SIZE);
    const ladder = ctx.seconds < 10 ? QUICK_STEPS : FULL_STEPS;
    const stepSeconds = Math.max(2, Math.min(4, Math.round(ctx.seconds / 8)));
    const run = new PipelineRun(allot.baseUrl);
    const steps: StepResult[] = [];
    try {
      for (const rate of ladder) {
        console.error(`  pipeline: ${count.format(rate)} updates/s offered for ${stepSeconds}s`);
        const step = await runStep(run, allot, rate, stepSeconds);
        steps.push(step);
        assertRunning(allot);
        // Past the first step that fell behind, higher rates only fall further behind.
        if (!step.keptUp && rate >= TARGET_RATE) break;
      }
    } finally {
      await run.stop();
    }
    const memory = await readMemory(ctx, allot.server.pid);
    const maxPending = Math.max(0, ...run.samples.map((s) => s.pending));
    // The headline is the highest step at or past the target that kept up, else the target step.
    const headline = steps.filter((s) => s.keptUp && s.offeredRate >= TARGET_RATE).at(-1) ??
      steps.find((s) => s.offeredRate === TARGET_RATE)!;
    const saturated = steps.find((s) => !s.keptUp) ?? null;
    const details = {
      seed,
      batch: BATCH,
      stepSeconds,
      steps,
      maxPending,
      serverMemoryKb: memory,
      serverStderr: serverStderr(allot),
    };
    const perCommit = headline.updatesPerCommit ?? 0;
    const sustained = headline.sustainedPerSec;
    const rows = [pipelineRow(
      "status-pipeline",
      `allot status pipeline (main.ts): ${count.format(headline.offeredRate)} updates/s offered`,
      headline,
      {
        opsPerSec: sustained ?? headline.appliedPerSec,
        figure: `${
          sustained === null
            ? "not drained: " + count.format(headline.appliedPerSec)
            : count.format(sustained)
        } updates/s sustained, ${perCommit.toFixed(1)} per commit`,
        targets: [
          {
            target: `≥ ${count.format(TARGET_RATE)} updates/s`,
            met: sustained !== null && sustained >= TARGET_RATE,
          },
          {
            target: `lag p99 < ${TARGET_LAG_P99_MS / 1000} s`,
            // A step no longer than the bound cannot show a lag past it.
            met: stepSeconds * 1000 <= TARGET_LAG_P99_MS
              ? null
              : headline.lagP99Ms !== null && headline.lagP99Ms < TARGET_LAG_P99_MS,
          },
          { target: `≥ ${TARGET_PER_COMMIT} updates/commit`, met: perCommit >= TARGET_PER_COMMIT },
        ],
        note: `${describeStep(headline)}. Sustained: the step's accepted updates ÷ the time from ` +
          `its start until the last of them was applied. Steps: ${
            steps.map((s) =>
              `${count.format(s.offeredRate)}/s ${s.keptUp ? "kept up" : "fell behind"}`
            ).join(", ")
          }. Seeding ${count.format(POOL_SIZE)} resources through status took ${
            seed.seconds.toFixed(1)
          } s. The server's peak resident memory (VmHWM) was ${
            memory ? `${kbToMb(memory.hwmKb).toFixed(1)} MB` : "unreadable"
          }, with up to ${count.format(maxPending)} updates pending.`,
      },
      details,
    )];
    if (saturated !== null) {
      rows.push(pipelineRow(
        "status-pipeline-ceiling",
        `allot status pipeline (main.ts): first offered step it fell behind at`,
        saturated,
        {
          figure: `${count.format(saturated.appliedPerSec)} updates/s applied at ${
            count.format(saturated.offeredRate)
          }/s offered`,
          note:
            `${describeStep(saturated)}. Fell behind: lag p99 of ${
              TARGET_LAG_P99_MS / 1000
            } s or more, a 503, over a second of the offered load pending at its end, or its ` +
            `updates not all applied within ${DRAIN_LIMIT_MS / 1000} s of its end.`,
        },
        { step: saturated },
      ));
    }
    return rows;
  });
}
