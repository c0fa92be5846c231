/**
 * The ceiling: a trivial Hono app (JSON in, JSON out, no storage) on the same runtime,
 * driven by the same wrk script as allot. Env: PORT.
 */
import { Hono } from "hono";

const app = new Hono()
  .get("/healthz", (c) => c.json({ status: "ok" }))
  .post("/echo", async (c) => {
    const { holder } = await c.req.json();
    return c.json({ ok: true, holder }, 200);
  });

Deno.serve({ port: Number(Deno.env.get("PORT")) }, app.fetch);
