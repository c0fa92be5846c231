/** Liveness and readiness: no token needed, nothing revealed. */
import { createRoute, z } from "@hono/zod-openapi";
import { storeAnswers } from "../lib/kv.ts";
import { newRouter, RetryAfterHeaders, type RouteDeps } from "./_shared.ts";

const Alive = z.object({ status: z.literal("ok") });
const Health = z.object({ status: z.enum(["ok", "unavailable"]) });

const livenessRoute = createRoute({
  method: "get",
  path: "/healthz",
  tags: ["health"],
  operationId: "liveness",
  summary: "Liveness: the process serves HTTP (no token)",
  security: [],
  responses: {
    200: {
      description: "Alive",
      content: { "application/json": { schema: Alive, example: { status: "ok" } } },
    },
  },
});

const readinessRoute = createRoute({
  method: "get",
  path: "/readyz",
  tags: ["health"],
  operationId: "readiness",
  summary: "Readiness: the KV store answers a strong read within 2 s (no token)",
  security: [],
  responses: {
    200: {
      description: "Ready",
      content: { "application/json": { schema: Health, example: { status: "ok" } } },
    },
    503: {
      description: "KV unreachable, or no answer within 2 s; ask again after Retry-After seconds",
      headers: RetryAfterHeaders,
      content: { "application/json": { schema: Health, example: { status: "unavailable" } } },
    },
  },
});

/** Health routes. */
export function healthRoutes({ kv }: RouteDeps) {
  return newRouter()
    .openapi(livenessRoute, (c) => c.json({ status: "ok" as const }, 200))
    .openapi(readinessRoute, async (c) => {
      if (await storeAnswers(kv)) return c.json({ status: "ok" as const }, 200);
      return c.json({ status: "unavailable" as const }, 503, { "Retry-After": "1" });
    });
}
