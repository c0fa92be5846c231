/**
 * The independent double-allocation checker: a slower Deno `fetch` client whose workers
 * loop claim → hold briefly → release, recording every acknowledged grant. The verdict
 * comes from that history alone, not from the server's word.
 *
 * Times are this process's monotonic clock. A hold is *certainly* live on the server
 * from the moment its 201 was read (the claim committed before it was answered) until
 * its release was sent (the release cannot commit before it is sent). Two holds of one
 * slot whose certain intervals overlap are a proven double allocation; comparing ack
 * times instead would flag a slot freed and re-granted before the client read the 204.
 */
import { percentile } from "./stats.ts";
import type { ClaimTarget } from "./wrk.ts";

/** One acknowledged grant and what became of it. Times in ms (performance.now()). */
export interface Hold {
  resource: string;
  slot: number;
  fencingToken: string;
  claimSentAt: number;
  grantedAt: number;
  releaseSentAt: number;
  /** When the 204 was read; null when the release was not acknowledged. */
  releasedAt: number | null;
}

/** A recorded checker run. */
export interface CheckerRun {
  workers: number;
  seconds: number;
  holds: Hold[];
  claimLatencyMs: number[];
  statuses: Record<string, number>;
  /** fetch calls that threw (connection refused or reset). */
  transportErrors: number;
  /** A few bodies of unexpected answers, prefixed by their status. */
  samples: string[];
}

/** What the history proves. */
export interface CheckerVerdict {
  grants: number;
  slotsUsed: number;
  /** Holds that began while another hold of the same slot was certainly live. */
  doubleAllocations: number;
  /** Claims whose fencing token was not above every token acknowledged before they were sent. */
  fencingViolations: number;
  /** Grants whose release was not answered 204. */
  unreleased: number;
  claimsPerSec: number;
  claimP50Ms: number | null;
  claimP99Ms: number | null;
  examples: string[];
}

/** The checker's load shape. */
export interface CheckerOptions {
  workers: number;
  seconds: number;
  /** Each hold lasts a random 0..maxHoldMs. */
  maxHoldMs: number;
}

const MAX_SAMPLES = 5;
const BACKOFF_MS = 50;

interface Grant {
  id: string;
  secret: string;
  resource: string;
  slot: number;
  fencingToken: string;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A run with nothing recorded yet, for any recording client (allot's, PostgreSQL's, Redis's). */
export function emptyRun(workers: number): CheckerRun {
  return {
    workers,
    seconds: 0,
    holds: [],
    claimLatencyMs: [],
    statuses: {},
    transportErrors: 0,
    samples: [],
  };
}

async function noteStatus(run: CheckerRun, res: Response, expected: number): Promise<void> {
  run.statuses[res.status] = (run.statuses[res.status] ?? 0) + 1;
  if (res.status === expected || res.status === 503 || run.samples.length >= MAX_SAMPLES) return;
  run.samples.push(`${res.status} ${(await res.clone().text()).slice(0, 400)}`);
}

/** Claims once; the grant and when it was sent, or null (after a short backoff) on failure. */
async function claimOnce(
  target: ClaimTarget,
  run: CheckerRun,
  holder: string,
): Promise<{ grant: Grant; sentAt: number; grantedAt: number } | null> {
  const sentAt = performance.now();
  const res = await fetch(`${target.baseUrl}${target.claimPath}`, {
    method: "POST",
    headers: { authorization: `Bearer ${target.token}`, "content-type": "application/json" },
    body: JSON.stringify({ holder }),
  });
  await noteStatus(run, res, 201);
  if (res.status !== 201) {
    await res.body?.cancel();
    await sleep(BACKOFF_MS);
    return null;
  }
  const grant: Grant = await res.json();
  const grantedAt = performance.now();
  run.claimLatencyMs.push(grantedAt - sentAt);
  return { grant, sentAt, grantedAt };
}

/** Releases a grant; when the 204 was read, or null if it was not acknowledged. */
async function releaseOnce(target: ClaimTarget, run: CheckerRun, grant: Grant) {
  const res = await fetch(`${target.baseUrl}${target.releasePrefix}${grant.id}`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${target.token}`, "allot-claim-secret": grant.secret },
  });
  await noteStatus(run, res, 204);
  await res.body?.cancel();
  return res.status === 204 ? performance.now() : null;
}

async function worker(
  target: ClaimTarget,
  run: CheckerRun,
  options: CheckerOptions,
  holder: string,
  deadline: number,
): Promise<void> {
  while (performance.now() < deadline) {
    try {
      const claimed = await claimOnce(target, run, holder);
      if (!claimed) continue;
      await sleep(Math.random() * options.maxHoldMs);
      const { grant } = claimed;
      const releaseSentAt = performance.now();
      const releasedAt = await releaseOnce(target, run, grant).catch(() => {
        run.transportErrors++;
        return null;
      });
      run.holds.push({
        resource: grant.resource,
        slot: grant.slot,
        fencingToken: grant.fencingToken,
        claimSentAt: claimed.sentAt,
        grantedAt: claimed.grantedAt,
        releaseSentAt,
        releasedAt,
      });
    } catch {
      run.transportErrors++;
      await sleep(BACKOFF_MS);
    }
  }
}

/** Runs `options.workers` claim → hold → release loops against `target` and records them. */
export async function runChecker(
  target: ClaimTarget,
  options: CheckerOptions,
): Promise<CheckerRun> {
  const run = emptyRun(options.workers);
  const start = performance.now();
  const deadline = start + options.seconds * 1000;
  await Promise.all(
    Array.from(
      { length: options.workers },
      (_, i) => worker(target, run, options, `checker-${i}`, deadline),
    ),
  );
  run.seconds = (performance.now() - start) / 1000;
  return run;
}

/** Orders fencing tokens: hex or decimal strings, a longer one is larger. */
export function compareTokens(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

function groupBy<T>(items: readonly T[], keyOf: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const key = keyOf(item);
    const group = groups.get(key);
    if (group) group.push(item);
    else groups.set(key, [item]);
  }
  return groups;
}

/** Holds of one slot that began while an earlier one was certainly live. */
function overlapsInSlot(holds: Hold[], examples: string[]): number {
  const byGrant = [...holds].sort((a, b) => a.grantedAt - b.grantedAt);
  let overlaps = 0;
  let live: Hold | null = null;
  for (const hold of byGrant) {
    if (live && hold.grantedAt < live.releaseSentAt) {
      overlaps++;
      examples.push(
        `${hold.resource}#${hold.slot}: token ${hold.fencingToken} granted at ` +
          `${hold.grantedAt.toFixed(3)} ms while ${live.fencingToken} was held until ` +
          `${live.releaseSentAt.toFixed(3)} ms`,
      );
    }
    if (!live || hold.releaseSentAt > live.releaseSentAt) live = hold;
  }
  return overlaps;
}

/**
 * Fencing-order violations on one resource: a claim sent after another's grant was read
 * must carry a larger token, and no token may repeat.
 */
function fencingViolationsOnResource(holds: Hold[], examples: string[]): number {
  const byGrant = [...holds].sort((a, b) => a.grantedAt - b.grantedAt);
  const bySend = [...holds].sort((a, b) => a.claimSentAt - b.claimSentAt);
  let violations = holds.length - new Set(holds.map((h) => h.fencingToken)).size;
  let known = 0;
  let highest: Hold | null = null;
  for (const hold of bySend) {
    while (known < byGrant.length && byGrant[known].grantedAt < hold.claimSentAt) {
      const earlier = byGrant[known++];
      if (!highest || compareTokens(earlier.fencingToken, highest.fencingToken) > 0) {
        highest = earlier;
      }
    }
    if (highest && compareTokens(hold.fencingToken, highest.fencingToken) <= 0) {
      violations++;
      examples.push(
        `${hold.resource}: token ${hold.fencingToken} claimed after ${highest.fencingToken} was granted`,
      );
    }
  }
  return violations;
}

/** Checks a recorded run: overlapping holds per slot, fencing order per resource, and rates. */
export function verify(run: CheckerRun): CheckerVerdict {
  const examples: string[] = [];
  const bySlot = groupBy(run.holds, (h) => `${h.resource}#${h.slot}`);
  let doubleAllocations = 0;
  for (const holds of bySlot.values()) doubleAllocations += overlapsInSlot(holds, examples);
  let fencingViolations = 0;
  for (const holds of groupBy(run.holds, (h) => h.resource).values()) {
    fencingViolations += fencingViolationsOnResource(holds, examples);
  }
  return {
    grants: run.holds.length,
    slotsUsed: bySlot.size,
    doubleAllocations,
    fencingViolations,
    unreleased: run.holds.filter((h) => h.releasedAt === null).length,
    claimsPerSec: run.seconds > 0 ? run.holds.length / run.seconds : 0,
    claimP50Ms: percentile(run.claimLatencyMs, 50),
    claimP99Ms: percentile(run.claimLatencyMs, 99),
    examples: examples.slice(0, 10),
  };
}
