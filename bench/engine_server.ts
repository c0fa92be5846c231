/**
 * The interleaved scenario's engine server: allot as main.ts builds it (createApp, one
 * KV handle, the queue consumer), so it is seeded and swept as allot is, plus one
 * bench-only route that runs the claim engine in this process, without HTTP:
 *
 *   POST /bench/engine {"seconds": n, "loops": n}  (admin bearer token)
 *     → EngineResult (bench/engine.ts) for n seconds of claim → release loops in region "bench".
 *   POST /bench/renew {"seconds": n, "loops": n, "grouped": bool}  (admin bearer token)
 *     → RenewResult (bench/engine.ts) for n seconds of renew loops in region "bench".
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
import { GroupRenewer } from "../lib/renewer.ts";
import { handleQueueMessage } from "../lib/queue.ts";
import { runClaimLoops, runRenewLoops } from "./engine.ts";

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
const RenewRequest = EngineRequest.extend({ grouped: z.boolean() });

/** An admin-only bench route whose zod-parsed body says what to run. */
function benchRoute<T extends z.ZodType<{ seconds: number }>>(
  schema: T,
  run: (body: z.infer<T>, stop: () => boolean) => Promise<unknown>,
) {
  return async (req: Request): Promise<Response> => {
    if (req.headers.get("authorization") !== `Bearer ${admin}`) {
      return new Response("admin only\n", { status: 401 });
    }
    const parsed = schema.safeParse(await req.json().catch(() => null));
    if (!parsed.success) return new Response(`${parsed.error.message}\n`, { status: 400 });
    const deadline = performance.now() + parsed.data.seconds * 1000;
    return Response.json(await run(parsed.data, () => performance.now() >= deadline));
  };
}

const routes: Record<string, (req: Request) => Promise<Response>> = {
  "/bench/engine": benchRoute(
    EngineRequest,
    ({ loops }, stop) => runClaimLoops(kv, clock, { region: "bench", loops, stop }),
  ),
  "/bench/renew": benchRoute(
    RenewRequest,
    ({ loops, grouped }, stop) =>
      runRenewLoops(kv, clock, {
        region: "bench",
        loops,
        stop,
        renewer: grouped ? new GroupRenewer(kv, clock) : undefined,
      }),
  ),
};

Deno.serve({ hostname: "127.0.0.1", port: config.port }, (req) => {
  const { pathname } = new URL(req.url);
  const route = routes[pathname];
  if (route && req.method === "POST") return route(req);
  return app.fetch(req);
});
