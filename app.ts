/**
 * The application factory: everything HTTP, built from a KV handle and a clock so
 * tests can run many isolated instances (each with its own in-memory state) at once.
 */
import { OpenAPIHono } from "@hono/zod-openapi";
import type { MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import type { TokenRegistry } from "./lib/auth.ts";
import { type Clock, systemClock } from "./lib/clock.ts";
import { GroupEnder } from "./lib/ender.ts";
import { GroupCommitter } from "./lib/group.ts";
import { GroupRenewer } from "./lib/renewer.ts";
import { LeasePlaces } from "./lib/leases.ts";
import { log } from "./lib/log.ts";
import { AllotError, type FieldIssue, UnavailableError, ValidationError } from "./lib/errors.ts";
import { isStoreUnavailable } from "./lib/kv.ts";
import { type AppEnv, fieldIssues, reportIssues } from "./routes/_shared.ts";
import { claimRoutes } from "./routes/claims.ts";
import { dashboardRoutes } from "./routes/dashboard.tsx";
import { deadLetterRoutes } from "./routes/dead_letters.ts";
import { docsRoutes } from "./routes/docs.ts";
import { healthRoutes } from "./routes/health.ts";
import { regionRoutes } from "./routes/regions.ts";
import { resourceRoutes } from "./routes/resources.ts";
import { statusRoutes } from "./routes/status.ts";
import { statsRoutes } from "./routes/stats.ts";
import type { StatusApplier } from "./lib/applier.ts";

export interface AppOptions {
  kv: Deno.Kv;
  tokens: TokenRegistry;
  clock?: Clock;
  /** The queue consumer of this isolate, when it runs one (its counters go to /v1/stats). */
  applier?: StatusApplier;
}

const JSON_TYPE = "must be application/json or another +json type";

/** The field a refusal by Hono's own checks is about: the body's size or syntax, its type. */
function issueOf(error: HTTPException): FieldIssue[] {
  if (error.status === 413) return [{ field: "body", message: "is too large" }];
  if (error.status === 415) return [{ field: "Content-Type", message: JSON_TYPE }];
  if (/JSON/.test(error.message)) return [{ field: "body", message: "is not valid JSON" }];
  return [];
}

/** Maps every error to problem+json; only a genuine bug becomes a 500. */
function toProblemResponse(error: unknown): Response {
  let known: AllotError | null = null;
  if (error instanceof AllotError) known = error;
  else if (error instanceof z.ZodError) {
    const { reported, summary } = reportIssues(fieldIssues(error.issues));
    known = new ValidationError(`Invalid request body: ${summary}`, reported);
  } else if (error instanceof HTTPException && error.status < 500) {
    known = new AllotError(
      error.status as AllotError["status"],
      error.status === 413
        ? "too-large"
        : error.status === 415
        ? "unsupported-media-type"
        : "bad-request",
      error.status === 413
        ? "Payload too large"
        : error.status === 415
        ? "Unsupported media type"
        : "Bad request",
      error.status === 415 ? `Content-Type ${JSON_TYPE}` : error.message || "Malformed request",
      issueOf(error),
    );
  }
  if (!known && isStoreUnavailable(error)) {
    log("error", "the store is unavailable", { error: String(error) });
    known = new UnavailableError("The store is unavailable; retry shortly", 1);
  }
  if (!known) {
    log("error", "unhandled error", { error: String(error), stack: (error as Error)?.stack });
    return Response.json(
      { type: "about:blank", title: "Internal error", status: 500, detail: "Internal error" },
      { status: 500, headers: { "content-type": "application/problem+json" } },
    );
  }
  const headers = new Headers({ "content-type": "application/problem+json" });
  if (known.retryAfterSeconds !== undefined) {
    headers.set("Retry-After", String(known.retryAfterSeconds));
  }
  if (known.status === 401) headers.set("WWW-Authenticate", 'Bearer realm="allot"');
  return new Response(JSON.stringify(known.toProblem()), { status: known.status, headers });
}

/**
 * A HEAD is answered as its GET without the body (Hono), and would say `Content-Length: 0`:
 * it says the GET's length instead, as HTTP asks.
 */
const withGetLength: MiddlewareHandler = async (c, next) => {
  await next();
  if (c.res.body === null || c.res.headers.has("content-length")) return;
  const length = (await c.res.clone().arrayBuffer()).byteLength;
  c.res.headers.set("content-length", String(length));
};

/**
 * The methods each path answers, from the app's own routes (read on first use, once all
 * are registered), so a known path asked with another method gets 405 and `Allow`.
 */
function routeMethods(app: OpenAPIHono<AppEnv>): (path: string) => string[] {
  let table: Array<{ path: RegExp; method: string }> | undefined;
  return (path) => {
    table ??= app.routes.filter((r) => r.method !== "ALL").map((r) => {
      const literal = r.path.replace(/[.*+?^$()|[\]\\{}]/g, "\\$&"); // `/openapi.json`
      return { path: new RegExp(`^${literal.replace(/:[^/]+/g, "[^/]+")}$`), method: r.method };
    });
    const methods = new Set(table.filter((r) => r.path.test(path)).map((r) => r.method));
    if (methods.has("GET")) methods.add("HEAD");
    return [...methods].sort();
  };
}

/** Builds the allot HTTP app over one KV handle. */
export function createApp({ kv, tokens, clock = systemClock, applier }: AppOptions) {
  const places = new LeasePlaces();
  const allocator = new GroupCommitter(kv, clock, places);
  const ender = new GroupEnder(kv, clock, places);
  const renewer = new GroupRenewer(kv, clock);
  const deps = { kv, clock, allocator, ender, renewer };
  const app = new OpenAPIHono<AppEnv>();
  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", {
    type: "http",
    scheme: "bearer",
    description:
      "A token from ALLOT_TOKENS; its role (admin, agent, client) decides what it may do.",
  });
  // First, so that it also measures what authentication or any later step answers.
  app.use("*", (c, next) => c.req.method === "HEAD" ? withGetLength(c, next) : next());
  app.use("/v1/*", async (c, next) => {
    c.set("principal", tokens.authenticate(c.req.header("authorization")));
    await next();
  });
  // Body sizes are checked by each route's `allow` (routes/_shared.ts), after its role.
  app.route("/", healthRoutes(deps));
  app.route("/", regionRoutes(deps));
  app.route("/", resourceRoutes(deps));
  app.route("/", claimRoutes(deps));
  app.route("/", statusRoutes(deps));
  app.route("/", deadLetterRoutes(deps));
  app.route(
    "/",
    statsRoutes({ claims: allocator, releases: ender, renews: renewer, status: applier }),
  );
  app.route("/", docsRoutes());
  app.route("/", dashboardRoutes());
  app.doc31("/openapi.json", {
    openapi: "3.1.0",
    info: {
      title: "allot",
      version: "1.0.0",
      description: "Exclusive resource allocation per region, backed by Deno KV.",
    },
    // Each deployment serves its own document: paths resolve against where it was fetched.
    servers: [{ url: "/", description: "This deployment" }],
  });
  const methodsOf = routeMethods(app);
  app.notFound((c) => {
    const allowed = methodsOf(c.req.path);
    // A HEAD answers as its GET would (the same body, so the same Content-Length).
    const method = c.req.method === "HEAD" ? "GET" : c.req.method;
    if (allowed.length === 0) {
      return toProblemResponse(
        new AllotError(404, "not-found", "Not found", `No route for ${method} ${c.req.path}`),
      );
    }
    const res = toProblemResponse(
      new AllotError(
        405,
        "method-not-allowed",
        "Method not allowed",
        `${c.req.path} answers ${allowed.join(", ")}, not ${method}`,
      ),
    );
    res.headers.set("Allow", allowed.join(", "));
    return res;
  });
  app.onError((error) => toProblemResponse(error));
  return app;
}
