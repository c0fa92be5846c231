/**
 * The anti-pattern, for real: check-then-act claims (demo/antipattern.ts's
 * `checkThenAct`: pick a random slot the view shows free, then write it blind) over a
 * file-backed Deno KV, reading a cached view that `kv.list` refreshes every T ms. No
 * allot code runs here. Claims arrive open-loop at R per second, each holds its slot
 * for a random 0..2H ms, then releases it with another blind write (last writer wins).
 * Every acknowledged grant is recorded in the checker's history shape and judged by
 * bench/checker.ts's `verify`, the same code that judges allot.
 *
 * A claim *acted on stale state* when the slot it chose had been written since the
 * view read it: its entry's committed versionstamp is newer than the one the view
 * holds, or a write to it was in flight. (Which of those were also still held by
 * another caller is counted apart: `collided`.)
 *
 * Usage: deno run -A bench/antipattern_sim.ts <kv path> <points JSON> <seconds per point>
 * Prints one JSON line: an array of AntipatternResult.
 */
import { checkThenAct, type CheckThenActStore } from "../demo/antipattern.ts";
import { seededRandom } from "../lib/random.ts";
import { type CheckerRun, type CheckerVerdict, verify } from "./checker.ts";
import { percentile } from "./stats.ts";

/** One point of the curve. */
export interface AntipatternPoint {
  /** Offered claim rate R, per second. */
  rate: number;
  /** The view is refreshed every T ms. */
  refreshMs: number;
  /** Pool size N (single-slot resources). */
  pool: number;
  /** Mean hold H, ms (each hold is uniform in 0..2H). */
  holdMs: number;
}

/** What one point measured. */
export interface AntipatternResult extends AntipatternPoint {
  seconds: number;
  /** Claims that arrived (achieved R = arrivals / seconds). */
  arrivals: number;
  granted: number;
  /** The view showed no free slot. */
  refused: number;
  /** Granted claims whose chosen slot had been written since the view read it. */
  stale: number;
  /** Granted claims whose chosen slot another caller held (or was writing) at the time. */
  collided: number;
  /** Mean and p99 age of the view at the claims' reads (now − when its list began), ms. */
  viewAgeMeanMs: number;
  viewAgeP99Ms: number | null;
  /** Mean time one `kv.list` of the pool took, ms, and how many ran. */
  refreshMeanMs: number;
  refreshes: number;
  /** Blind-write latency of claims (decision → commit), ms. */
  writeP50Ms: number | null;
  writeP99Ms: number | null;
  /** The checker's verdict on the recorded history. */
  verdict: CheckerVerdict;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Versionstamps are fixed-width hex: string order is commit order. */
const newer = (a: string, b: string) => a > b;

/**
 * A pool of slots in KV (`[...prefix, slot]` → holder or null), read through a view
 * that `kv.list` replaces every `refreshMs`; writes are blind `kv.set`s.
 */
class KvCachedStore implements CheckThenActStore {
  /** Held slots as the view saw them. */
  #view = new Map<number, string>();
  /** Versionstamp of every slot's entry as the view saw it. */
  #viewStamps = new Map<number, string>();
  #viewAt = 0;
  /** Latest committed versionstamp per slot (what the store holds now). */
  readonly committed: string[];
  /** Writes issued and not yet committed, per slot. */
  readonly inFlight: Int32Array;
  #lastWrite: { commit: Promise<Deno.KvCommitResult>; stale: boolean } | null = null;
  #running = true;
  refreshes = 0;
  refreshMsTotal = 0;
  #loop: Promise<void> | null = null;

  constructor(
    private readonly kv: Deno.Kv,
    private readonly prefix: Deno.KvKey,
    readonly pool: number,
    private readonly refreshMs: number,
  ) {
    this.committed = new Array(pool).fill("");
    this.inFlight = new Int32Array(pool);
  }

  /** Writes every slot free (null), in atomics of 1,000 sets, and takes the first view. */
  async seed(): Promise<void> {
    for (let from = 0; from < this.pool; from += 1000) {
      const op = this.kv.atomic();
      const to = Math.min(this.pool, from + 1000);
      for (let slot = from; slot < to; slot++) op.set([...this.prefix, slot], null);
      const res = await op.commit();
      if (!res.ok) throw new Error("seeding the anti-pattern pool failed");
      for (let slot = from; slot < to; slot++) this.committed[slot] = res.versionstamp;
    }
    await this.#refresh();
    this.#loop = this.#refreshLoop();
  }

  async #refresh(): Promise<void> {
    const started = performance.now();
    const view = new Map<number, string>();
    const stamps = new Map<number, string>();
    for await (
      const entry of this.kv.list<string | null>({ prefix: this.prefix }, { batchSize: 1000 })
    ) {
      const slot = entry.key.at(-1) as number;
      stamps.set(slot, entry.versionstamp);
      if (entry.value !== null) view.set(slot, entry.value);
    }
    this.#view = view;
    this.#viewStamps = stamps;
    this.#viewAt = started;
    this.refreshes++;
    this.refreshMsTotal += performance.now() - started;
  }

  async #refreshLoop(): Promise<void> {
    while (this.#running) {
      const next = this.#viewAt + this.refreshMs;
      await sleep(Math.max(0, next - performance.now()));
      if (this.#running) await this.#refresh();
    }
  }

  async stop(): Promise<void> {
    this.#running = false;
    await this.#loop;
  }

  read(_now: number): ReadonlyMap<number, string> {
    return this.#view;
  }

  /** How old the view is: now − when its list began. */
  age(now: number): number {
    return now - this.#viewAt;
  }

  /** Whether `slot` was written since the view read it (committed since, or in flight). */
  staleFor(slot: number): boolean {
    return this.inFlight[slot] > 0 || newer(this.committed[slot], this.#viewStamps.get(slot) ?? "");
  }

  write(slot: number, holder: string | null): void {
    const stale = this.staleFor(slot);
    this.#lastWrite = { commit: this.set(slot, holder), stale };
  }

  /** The last `write`: its commit, and whether the view was stale for its slot when issued. */
  takeWrite(): { commit: Promise<Deno.KvCommitResult>; stale: boolean } {
    const write = this.#lastWrite!;
    this.#lastWrite = null;
    return write;
  }

  /** A blind set, tracked: in flight until it commits, then the slot's latest stamp. */
  async set(slot: number, holder: string | null): Promise<Deno.KvCommitResult> {
    this.inFlight[slot]++;
    try {
      const res = await this.kv.set([...this.prefix, slot], holder);
      if (newer(res.versionstamp, this.committed[slot])) this.committed[slot] = res.versionstamp;
      return res;
    } finally {
      this.inFlight[slot]--;
    }
  }
}

/** A verdict with a few of its examples, not all. */
function trimmed(verdict: CheckerVerdict): CheckerVerdict {
  return { ...verdict, examples: verdict.examples.slice(0, 3) };
}

/** Runs one point for `seconds` of arrivals, then waits for the last holds to end. */
async function runPoint(
  kv: Deno.Kv,
  index: number,
  point: AntipatternPoint,
  seconds: number,
): Promise<AntipatternResult> {
  const store = new KvCachedStore(kv, ["antipattern", index], point.pool, point.refreshMs);
  await store.seed();
  const random = seededRandom(1000 + index);
  const run: CheckerRun = {
    workers: 0,
    seconds,
    holds: [],
    claimLatencyMs: [],
    statuses: {},
    transportErrors: 0,
    samples: [],
  };
  /** Callers that believe they hold each slot (or are writing it). */
  const claimants = new Int32Array(point.pool);
  const ages: number[] = [];
  let arrivals = 0;
  let refused = 0;
  let stale = 0;
  let collided = 0;

  const claim = async (caller: string) => {
    const sentAt = performance.now();
    const slot = checkThenAct(store, point.pool, caller, sentAt, random);
    if (slot === null) {
      refused++;
      return;
    }
    ages.push(store.age(sentAt));
    const write = store.takeWrite();
    if (write.stale) stale++;
    if (claimants[slot] > 0) collided++;
    claimants[slot]++;
    const res = await write.commit;
    const grantedAt = performance.now();
    run.claimLatencyMs.push(grantedAt - sentAt);
    await sleep(random() * 2 * point.holdMs);
    const releaseSentAt = performance.now();
    claimants[slot]--;
    await store.set(slot, null);
    run.holds.push({
      resource: `slot-${slot}`,
      slot: 0,
      fencingToken: res.versionstamp,
      claimSentAt: sentAt,
      grantedAt,
      releaseSentAt,
      releasedAt: performance.now(),
    });
  };

  const started = performance.now();
  const end = started + seconds * 1000;
  const claims: Promise<void>[] = [];
  while (performance.now() < end) {
    const due = Math.floor(((performance.now() - started) / 1000) * point.rate);
    while (arrivals < due) claims.push(claim(`caller-${index}-${arrivals++}`));
    await sleep(1);
  }
  const elapsed = (performance.now() - started) / 1000;
  await Promise.all(claims);
  await store.stop();
  return {
    ...point,
    seconds: elapsed,
    arrivals,
    granted: run.holds.length,
    refused,
    stale,
    collided,
    viewAgeMeanMs: ages.reduce((sum, a) => sum + a, 0) / Math.max(1, ages.length),
    viewAgeP99Ms: percentile(ages, 99),
    refreshMeanMs: store.refreshMsTotal / Math.max(1, store.refreshes),
    refreshes: store.refreshes,
    writeP50Ms: percentile(run.claimLatencyMs, 50),
    writeP99Ms: percentile(run.claimLatencyMs, 99),
    verdict: trimmed(verify({ ...run, seconds: elapsed })),
  };
}

if (import.meta.main) {
  const [path, pointsJson, secondsArg] = Deno.args;
  const points: AntipatternPoint[] = JSON.parse(pointsJson);
  const kv = await Deno.openKv(path);
  const results: AntipatternResult[] = [];
  for (const [i, point] of points.entries()) {
    results.push(await runPoint(kv, i, point, Number(secondsArg)));
  }
  kv.close();
  console.log(JSON.stringify(results));
}
