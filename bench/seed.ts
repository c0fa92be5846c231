/**
 * Seeds an allot region through its status pipeline: batches of up to 1,000
 * `{resource, seq: 1, state: "ready"}` updates (POST /v1/regions/{r}/status, each a
 * single atomic enqueue), then GET /v1/regions/{r} until the pool counts them all and
 * nothing is pending. Registering a resource this way costs a fraction of a commit,
 * where a PUT per resource costs one request and one commit each.
 */

/** Most updates one status request may carry (lib/schemas.ts MAX_STATUS_UPDATES). */
export const SEED_BATCH = 1000;
/** Status requests in flight at once while seeding. */
const SEED_CONCURRENCY = 2;
/**
 * A sender waits while more updates than this are pending: the consumer, not ingest,
 * bounds how fast a seed is applied, and a backlog of the whole seed would only add
 * its queued messages to the server's memory (the rss scenario measures the pool).
 */
const SEED_MAX_PENDING = 5000;
/** Longest wait for the consumer to apply the whole seed. */
const SEED_TIMEOUT_MS = 180_000;
/** How often the region is read while waiting for the seed to be applied. */
const POLL_MS = 100;

/** Where and as whom to seed. */
export interface SeedTarget {
  baseUrl: string;
  /** An admin (or agent) token. */
  token: string;
}

/** What seeding took. */
export interface SeedResult {
  resources: number;
  seconds: number;
  /** Status batches answered 503 (backlog bound) and sent again after Retry-After. */
  retried503: number;
}

/** A resource id: `${prefix}${i}` zero-padded so ids sort in creation order. */
export function resourceId(prefix: string, i: number): string {
  return `${prefix}${String(i).padStart(6, "0")}`;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function headers(token: string): HeadersInit {
  return { authorization: `Bearer ${token}`, "content-type": "application/json" };
}

/** PUT /v1/regions/{region} with `body`; throws on anything but 2xx. */
export async function putRegion(target: SeedTarget, region: string, body: unknown) {
  const res = await fetch(`${target.baseUrl}/v1/regions/${region}`, {
    method: "PUT",
    headers: headers(target.token),
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`PUT /v1/regions/${region}: ${res.status} ${await res.text()}`);
  await res.body?.cancel();
}

/** The health part of GET /v1/regions/{region}. */
export interface RegionHealth {
  total: number;
  free: number;
  claimed: number;
  pending: number;
  deadLettered: number;
  lagMs: number;
  mode: string;
  modeHistory: { at: string; from: string; to: string; reason: string; lagMs: number }[];
}

/** GET /v1/regions/{region}; throws on anything but 200. */
export async function getRegion(target: SeedTarget, region: string): Promise<RegionHealth> {
  const res = await fetch(`${target.baseUrl}/v1/regions/${region}`, {
    headers: { authorization: `Bearer ${target.token}` },
  });
  if (!res.ok) throw new Error(`GET /v1/regions/${region}: ${res.status} ${await res.text()}`);
  return await res.json();
}

/** POSTs one status batch, waiting out 503s (backlog bound); how many 503s it got. */
async function postBatch(target: SeedTarget, region: string, updates: unknown[]) {
  let refused = 0;
  for (;;) {
    const res = await fetch(`${target.baseUrl}/v1/regions/${region}/status`, {
      method: "POST",
      headers: headers(target.token),
      body: JSON.stringify({ updates }),
    });
    const text = await res.text();
    if (res.status === 202) return refused;
    if (res.status !== 503) {
      throw new Error(`POST /v1/regions/${region}/status: ${res.status} ${text.slice(0, 400)}`);
    }
    refused++;
    await sleep(1000 * Math.min(2, Number(res.headers.get("retry-after") ?? 1)));
  }
}

/**
 * Registers `count` single-slot resources `${prefix}000000…` in an existing region
 * through status batches, keeping at most about SEED_MAX_PENDING of them waiting, and
 * waits until they are all applied (`total` reached, `pending` 0). The region must
 * start empty of them.
 */
export async function seedThroughStatus(
  target: SeedTarget,
  region: string,
  count: number,
  prefix = "r-",
): Promise<SeedResult> {
  const started = performance.now();
  const before = (await getRegion(target, region)).total;
  let next = 0;
  let retried503 = 0;
  const sender = async () => {
    while (next < count) {
      while ((await getRegion(target, region)).pending > SEED_MAX_PENDING) await sleep(POLL_MS);
      if (next >= count) break;
      const from = next;
      next = Math.min(count, next + SEED_BATCH);
      const updates = [];
      for (let i = from; i < next; i++) {
        updates.push({ resource: resourceId(prefix, i), seq: 1, state: "ready" });
      }
      retried503 += await postBatch(target, region, updates);
    }
  };
  await Promise.all(Array.from({ length: SEED_CONCURRENCY }, sender));
  const deadline = Date.now() + SEED_TIMEOUT_MS;
  for (;;) {
    const health = await getRegion(target, region);
    if (health.total >= before + count && health.pending === 0) break;
    if (Date.now() > deadline) {
      throw new Error(
        `seeding ${count} resources in "${region}" not applied after ${SEED_TIMEOUT_MS} ms: ` +
          JSON.stringify({ ...health, modeHistory: undefined }),
      );
    }
    await sleep(POLL_MS);
  }
  return { resources: count, seconds: (performance.now() - started) / 1000, retried503 };
}
