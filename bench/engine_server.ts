/**
 * The interleaved scenario's engine server: allot as main.ts builds it (createApp, one
 * KV handle, the queue consumer), so it is seeded and swept as allot is, plus one
 * bench-only route that runs the claim engine in this process, without HTTP:
 *
 *   POST /bench/engine {"seconds": n, "loops": n}  (admin bearer token)
 *     → EngineResult (bench/engine.ts) for n seconds of claim → release loops in region "bench".
 *
 * Environment as main.ts: PORT, ALLOT_KV, ALLOT_TOKENS.
 */
import { z } from "zod";
import { createApp } from "../app.ts";
import { StatusApplier } from "../lib/applier.ts";
import { TokenRegistry } from "../lib/auth.ts";
import { systemClock } from "../lib/clock.ts";
import { loadConfigFromEnv } from "../lib/config.ts";
import { GroupEnder } from "../lib/ender.ts";
import { handleQueueMessage } from "../lib/queue.ts";
import { runClaimLoops } from "./engine.ts";

const config = loadConfigFromEnv();
const kv = await Deno.openKv(config.kvPath);
const clock = systemClock;
const applier = new StatusApplier(kv, clock);
const queueEnder = new GroupEnder(kv, clock);
kv.listenQueue(async (message) => {
  await handleQueueMessage({ kv, clock, applier, ender: queueEnder }, message);
});
const app = createApp({ kv, tokens: TokenRegistry.from(config.tokens), clock, applier });
const admin = config.tokens.find((t) => t.role === "admin")?.token;
if (admin === undefined) throw new Error("ALLOT_TOKENS needs an admin token");

const EngineRequest = z.strictObject({
  seconds: z.number().positive().max(600),
  loops: z.number().int().min(1).max(1024),
});

async function engineRoute(req: Request): Promise<Response> {
  if (req.headers.get("authorization") !== `Bearer ${admin}`) {
    return new Response("admin only\n", { status: 401 });
  }
  const parsed = EngineRequest.safeParse(await req.json().catch(() => null));
  if (!parsed.success) return new Response(`${parsed.error.message}\n`, { status: 400 });
  const { seconds, loops } = parsed.data;
  const deadline = performance.now() + seconds * 1000;
  const result = await runClaimLoops(kv, clock, {
    region: "bench",
    loops,
    stop: () => performance.now() >= deadline,
  });
  return Response.json(result);
}

Deno.serve({ hostname: "127.0.0.1", port: config.port }, (req) => {
  const { pathname } = new URL(req.url);
  if (pathname === "/bench/engine" && req.method === "POST") return engineRoute(req);
  return app.fetch(req);
});
