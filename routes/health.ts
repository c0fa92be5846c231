/** Liveness and readiness: no token needed, nothing revealed. */
import { createRoute, z } from "@hono/zod-openapi";
import { newRouter, type RouteDeps } from "./_shared.ts";

const Health = z.object({ status: z.enum(["ok", "unavailable"]) });

const livenessRoute = createRoute({
  method: "get",
  path: "/healthz",
  tags: ["health"],
  summary: "Liveness: the process serves HTTP",
  responses: { 200: { description: "Alive", content: { "application/json": { schema: Health } } } },
});

const readinessRoute = createRoute({
  method: "get",
  path: "/readyz",
  tags: ["health"],
  summary: "Readiness: the KV store answers",
  responses: {
    200: { description: "Ready", content: { "application/json": { schema: Health } } },
    503: { description: "KV unreachable", content: { "application/json": { schema: Health } } },
  },
});

/** Health routes. */
export function healthRoutes({ kv }: RouteDeps) {
  return newRouter()
    .openapi(livenessRoute, (c) => c.json({ status: "ok" as const }, 200))
    .openapi(readinessRoute, async (c) => {
      try {
        await kv.get(["readyz"]);
        return c.json({ status: "ok" as const }, 200);
      } catch {
        return c.json({ status: "unavailable" as const }, 503);
      }
    });
}
