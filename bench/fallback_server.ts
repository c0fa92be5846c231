/**
 * The fallback scenario's server: allot as main.ts builds it (createApp, one KV handle,
 * a StatusApplier consuming the queue), plus a lag control that only this bench script
 * has. Its StatusApplier's `faults.beforeCommit` holds a commit touching a controlled
 * region until that region's oldest pending update is `targetMs` old, so the region's
 * lag rises to and hovers at the target (or grows without bound while held). main.ts
 * and app.ts have no such switch.
 *
 * Bench-only routes (admin bearer token), outside the app:
 *   PUT /bench/lag/{region}   {"targetMs": n} holds commits until the lag is n ms;
 *                             {"hold": true} holds them until the next PUT.
 *   GET /bench/oldest/{region} → {"enqueuedAt": ms | null}: the oldest pending update's
 *                             enqueue time (server clock, epoch ms).
 *
 * Environment as main.ts: PORT, ALLOT_KV, ALLOT_TOKENS.
 */
import { createApp } from "../app.ts";
import { StatusApplier } from "../lib/applier.ts";
import { TokenRegistry } from "../lib/auth.ts";
import { systemClock } from "../lib/clock.ts";
import { loadConfigFromEnv } from "../lib/config.ts";
import { oldestPending } from "../lib/lag.ts";
import { handleQueueMessage } from "../lib/queue.ts";

/** How often a held commit looks at the lag again, ms. */
const POLL_MS = 5;

const config = loadConfigFromEnv();
const kv = await Deno.openKv(config.kvPath);
const clock = systemClock;

/** Lag targets per region, ms; Infinity holds. No entry: commits are not held. */
const targets = new Map<string, number>();

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Enqueue time of the region's oldest pending update, or null when none is pending. */
async function oldestEnqueuedAt(region: string): Promise<number | null> {
  const { oldest } = await oldestPending(kv, region);
  return oldest === null ? null : oldest.key.at(-2) as number;
}

/** Waits until every controlled region of a commit lags at least its target. */
async function holdUntilLagged(regions: ReadonlySet<string>): Promise<void> {
  for (const region of regions) {
    for (;;) {
      const target = targets.get(region) ?? 0;
      if (target <= 0) break;
      if (target !== Infinity) {
        const at = await oldestEnqueuedAt(region);
        if (at === null || clock.now() - at >= target) break;
      }
      await sleep(POLL_MS);
    }
  }
}

const applier = new StatusApplier(kv, clock, { faults: { beforeCommit: holdUntilLagged } });
kv.listenQueue(async (message) => {
  await handleQueueMessage({ kv, clock, applier }, message);
});
const tokens = TokenRegistry.from(config.tokens);
const app = createApp({ kv, tokens, clock, applier });
const admin = config.tokens.find((t) => t.role === "admin")?.token;
if (admin === undefined) throw new Error("ALLOT_TOKENS needs an admin token");

async function benchRoute(req: Request, path: string[]): Promise<Response> {
  if (req.headers.get("authorization") !== `Bearer ${admin}`) {
    return new Response("admin only\n", { status: 401 });
  }
  const [what, region] = path;
  if (what === "lag" && region && req.method === "PUT") {
    const body = await req.json() as { targetMs?: number; hold?: boolean };
    targets.set(region, body.hold ? Infinity : Math.max(0, Number(body.targetMs ?? 0)));
    return new Response(null, { status: 204 });
  }
  if (what === "oldest" && region && req.method === "GET") {
    return Response.json({ enqueuedAt: await oldestEnqueuedAt(region), now: clock.now() });
  }
  return new Response("not found\n", { status: 404 });
}

Deno.serve({ hostname: "127.0.0.1", port: config.port }, (req) => {
  const url = new URL(req.url);
  if (url.pathname.startsWith("/bench/")) {
    return benchRoute(req, url.pathname.split("/").slice(2));
  }
  return app.fetch(req);
});
