/**
 * What must hold after a chaos or soak run, checked over HTTP against the server's
 * answers: nothing acknowledged was lost (every 201 claim readable with its fencing
 * token, every 204 release reading back `released`, every 202 status update applied or
 * superseded by a higher seq), no lease stuck past its expiry (every pool whole again),
 * and every region's queue watermark back to zero.
 */
import type { Violation } from "../tests/_checker.ts";
import type { ApiClient } from "./http.ts";
import { CHAOS_TOKENS, sleep } from "./server.ts";
import type { Workload } from "./workload.ts";

/** One thing a run proved wrong: the history checker's findings, and the audits'. */
export interface ChaosViolation {
  kind:
    | Violation["kind"]
    | "unexpected-answer"
    | "lost-claim"
    | "lost-release"
    | "lost-status"
    | "stuck-lease"
    | "watermark"
    | "kv-state";
  message: string;
}

/** A region's figures as GET /v1/regions/{region} answers them. */
export interface RegionHealth {
  free: number;
  claimed: number;
  total: number;
  pending: number;
  lagMs: number;
  deadLettered: number;
  mode: string;
}

const POLL_MS = 100;
/** Reads in flight at once while auditing claims. */
const AUDIT_CONCURRENCY = 8;

/** Polls `probe` until it returns a value `done` accepts, or `timeoutMs` passes (then the last value). */
async function pollUntil<T>(
  probe: () => Promise<T>,
  done: (value: T) => boolean,
  timeoutMs: number,
): Promise<{ value: T; met: boolean }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (done(value)) return { value, met: true };
    if (Date.now() >= deadline) return { value, met: false };
    await sleep(POLL_MS);
  }
}

/** GET /v1/regions/{region}, resent until answered 200. */
export async function regionHealth(api: ApiClient, region: string): Promise<RegionHealth> {
  for (let i = 0; i < 100; i++) {
    const res = await api.call("GET", `/v1/regions/${region}`, { token: CHAOS_TOKENS.admin });
    if (res.ok && res.status === 200) return res.body;
    await sleep(POLL_MS);
  }
  throw new Error(`GET /v1/regions/${region} never answered 200`);
}

/** Every item of a paginated listing, as admin. */
async function listAll<T>(api: ApiClient, path: string): Promise<T[]> {
  const items: T[] = [];
  let cursor: string | null = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const url: string = cursor === null
      ? path
      : `${path}${sep}cursor=${encodeURIComponent(cursor)}`;
    const res = await api.call("GET", url, { token: CHAOS_TOKENS.admin });
    if (!res.ok || res.status !== 200) throw new Error(`GET ${url}: ${JSON.stringify(res)}`);
    items.push(...res.body.items);
    cursor = res.body.cursor;
  } while (cursor !== null);
  return items;
}

/** Runs `work` over `items`, `concurrency` at a time. */
async function eachLimited<T>(
  items: readonly T[],
  concurrency: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: concurrency }, async () => {
    while (next < items.length) await work(items[next++]);
  });
  await Promise.all(lanes);
}

/** Every 201 claim reads back with its resource, slot and fencing token; every 204 release as `released`. */
export async function auditClaims(api: ApiClient, workload: Workload): Promise<ChaosViolation[]> {
  const violations: ChaosViolation[] = [];
  await eachLimited([...workload.grants.values()], AUDIT_CONCURRENCY, async (grant) => {
    const res = await api.call("GET", `/v1/claims/${grant.id}`, { token: CHAOS_TOKENS.admin });
    if (!res.ok || res.status !== 200) {
      const got = res.ok ? `${res.status} ${JSON.stringify(res.body)}` : res.error;
      violations.push({
        kind: "lost-claim",
        message: `claim ${grant.id} answered 201, now ${got}`,
      });
      return;
    }
    const c = res.body;
    if (
      c.resource !== grant.resource || c.slot !== grant.slot || c.servedBy !== grant.servedBy ||
      c.fencingToken !== grant.fencingToken
    ) {
      violations.push({
        kind: "lost-claim",
        message: `claim ${grant.id} was granted as ${JSON.stringify(grant)}, reads back as ${
          JSON.stringify(c)
        }`,
      });
    }
    if (workload.released.has(grant.id) && c.state !== "released") {
      violations.push({
        kind: "lost-release",
        message: `claim ${grant.id}: release answered 204, claim reads back ${c.state}`,
      });
    }
  });
  return violations;
}

/** Waits (bounded) until the region has no pending status update and no lag. */
export async function auditDrained(
  api: ApiClient,
  region: string,
  timeoutMs: number,
): Promise<ChaosViolation[]> {
  const { value, met } = await pollUntil(
    () => regionHealth(api, region),
    (h) => h.pending === 0 && h.lagMs === 0,
    timeoutMs,
  );
  const violations: ChaosViolation[] = [];
  if (!met) {
    violations.push({
      kind: "watermark",
      message: `region ${region}: pending ${value.pending}, lagMs ${value.lagMs} ` +
        `after waiting ${timeoutMs} ms for the status queue to drain`,
    });
  }
  if (value.deadLettered !== 0) {
    violations.push({
      kind: "lost-status",
      message: `region ${region}: ${value.deadLettered} status updates were dead-lettered`,
    });
  }
  return violations;
}

interface ResourceView {
  id: string;
  state: string;
  seq: number;
  load: number | null;
}

/**
 * Every update of a 202 batch was applied: the resource's seq is at least the highest
 * acknowledged one, and when equal its fields are that update's. A higher seq must come
 * from a batch that was sent (its answer lost), never from nowhere. Call once drained.
 */
export async function auditStatus(
  api: ApiClient,
  workload: Workload,
  region: string,
): Promise<ChaosViolation[]> {
  const violations: ChaosViolation[] = [];
  const resources = await listAll<ResourceView>(api, `/v1/regions/${region}/resources`);
  const byId = new Map(resources.map((r) => [r.id, r]));
  for (const [id, acked] of workload.statusAcked) {
    const r = byId.get(id);
    const sent = workload.statusSent.get(id) ?? 0;
    const lost = (why: string) =>
      violations.push({
        kind: "lost-status",
        message: `resource ${id}: update ${JSON.stringify(acked)} was answered 202, but ${why}`,
      });
    if (!r) lost("the resource is missing");
    else if (r.seq < acked.seq) lost(`the resource reads back seq ${r.seq}`);
    else if (r.seq > sent) lost(`the resource reads back seq ${r.seq}, never sent`);
    else if (r.seq === acked.seq && (r.state !== acked.state || r.load !== acked.load)) {
      lost(`the resource reads back ${JSON.stringify(r)}`);
    }
  }
  return violations;
}

/**
 * Waits until every lease is past its expiry, then (bounded) until every region's pool
 * is whole again: free == total, claimed == 0. Reports the claims still active if not.
 */
export async function auditPoolsWhole(
  api: ApiClient,
  regions: readonly string[],
  leaseHorizon: number,
  timeoutMs: number,
): Promise<ChaosViolation[]> {
  await sleep(Math.max(0, leaseHorizon - Date.now()) + POLL_MS);
  const violations: ChaosViolation[] = [];
  for (const region of regions) {
    const { value, met } = await pollUntil(
      () => regionHealth(api, region),
      (h) => h.free === h.total && h.claimed === 0,
      timeoutMs,
    );
    if (met) continue;
    const active = await listAll<{ id: string; leaseExpiresAt: string }>(
      api,
      `/v1/regions/${region}/claims?state=active`,
    );
    violations.push({
      kind: "stuck-lease",
      message: `region ${region}: free ${value.free}/${value.total}, claimed ${value.claimed} ` +
        `${timeoutMs} ms after every lease expired; still active: ${
          JSON.stringify(active.slice(0, 10).map((c) => [c.id, c.leaseExpiresAt]))
        }`,
    });
  }
  return violations;
}
