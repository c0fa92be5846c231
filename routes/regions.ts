/** /v1/regions: configuration (admin) and health (any role). */
import { createRoute } from "@hono/zod-openapi";
import {
  deleteRegion,
  describeRegion,
  describeWritten,
  listRegions,
  putRegion,
} from "../lib/regions.ts";
import { authorizeRegion } from "../lib/auth.ts";
import { ConsistencyToken, RegionInput, RegionView } from "../lib/schemas.ts";
import { regionExample, regionWrittenExample } from "./_examples.ts";
import {
  allow,
  bearerSecurity,
  ConsistencyTokenHeader,
  inUseProblem,
  newRouter,
  PageQuery,
  pageResponse,
  problems,
  RegionParams,
  type RouteDeps,
  tokenOnlyResponse,
} from "./_shared.ts";

const RegionWritten = RegionView.extend({ consistencyToken: ConsistencyToken });

const putRoute = createRoute({
  method: "put",
  path: "/v1/regions/{region}",
  tags: ["regions"],
  operationId: "putRegion",
  summary: "Create or replace a region's configuration (admin)",
  description:
    "**Role:** admin (a region-scoped admin token only for its regions).\n\nEvery field is optional; omitted fields take their defaults (a full replace): `backup` null, `lag` `{enterMs: 2000, exitMs: 500}`, `lease` `{defaultMs: 60000, maxMs: 3600000}`. `exitMs < enterMs` and `defaultMs <= maxMs`; the backup must be another existing region (for a region-scoped admin, one of its own regions: else 403).",
  security: bearerSecurity,
  middleware: [allow(["admin"], "region")],
  request: {
    params: RegionParams,
    body: {
      content: {
        "application/json": {
          schema: RegionInput,
          example: { backup: "fra", lag: { enterMs: 2000, exitMs: 500 } },
        },
      },
      required: false,
    },
  },
  responses: {
    200: {
      description: "Updated",
      headers: ConsistencyTokenHeader,
      content: { "application/json": { schema: RegionWritten, example: regionWrittenExample } },
    },
    201: {
      description: "Created",
      headers: ConsistencyTokenHeader,
      content: { "application/json": { schema: RegionWritten, example: regionWrittenExample } },
    },
    ...problems(400, 401, 403, 413, 415, 422, 503),
  },
});

const listRoute = createRoute({
  method: "get",
  path: "/v1/regions",
  tags: ["regions"],
  operationId: "listRegions",
  summary: "A page of the regions the token may see, in name order, with health (any role)",
  description:
    "**Roles:** admin, agent, client; a region-scoped token sees only its regions (a page may then hold fewer than `limit`: follow `cursor` until it is null).\n\nEach region's mode is evaluated on the way (so reading health also moves a region into or out of fallback).",
  security: bearerSecurity,
  middleware: [allow(["admin", "agent", "client"])],
  request: { query: PageQuery },
  responses: {
    200: pageResponse(RegionView, regionExample),
    ...problems(400, 401, 503),
  },
});

const getRoute = createRoute({
  method: "get",
  path: "/v1/regions/{region}",
  tags: ["regions"],
  operationId: "getRegion",
  summary: "A region's configuration and health (any role)",
  description:
    "**Roles:** admin, agent, client (region-scoped tokens: their regions).\n\nConfiguration plus `mode` (`primary`/`fallback`) and its recent history, status `lagMs` and `pending`, and the pool's `free`, `claimed` and `total` slots. Always read strongly.",
  security: bearerSecurity,
  middleware: [allow(["admin", "agent", "client"], "region")],
  request: { params: RegionParams },
  responses: {
    200: {
      description: "The region",
      content: { "application/json": { schema: RegionView, example: regionExample } },
    },
    ...problems(400, 401, 403, 404, 503),
  },
});

const deleteRoute = createRoute({
  method: "delete",
  path: "/v1/regions/{region}",
  tags: ["regions"],
  operationId: "deleteRegion",
  summary: "Delete a region nothing uses any more (admin)",
  description:
    "**Role:** admin (a region-scoped admin token only for its regions).\n\nRefused with 409, naming what is left, while the region has resources, live leases (or a removed resource's leases still being ended), status messages waiting or dead-lettered, or is another region's backup (a region-scoped admin is told how many regions outside its scope, not their names). Its ended claims stay readable (`GET /v1/claims/{id}`) until they expire; a retry with an Idempotency-Key of one of its claims answers 404 while the region is gone. A region created again under the name starts with an empty pool, in primary mode, with no history.",
  security: bearerSecurity,
  middleware: [allow(["admin"], "region")],
  request: { params: RegionParams },
  responses: {
    200: tokenOnlyResponse("Deleted"),
    ...problems(400, 401, 403, 404, 503),
    ...inUseProblem,
  },
});

/** Region routes. */
export function regionRoutes({ kv, clock }: RouteDeps) {
  return newRouter()
    .openapi(putRoute, async (c) => {
      const { region } = c.req.valid("param");
      const principal = c.get("principal");
      const input = RegionInput.parse(c.req.valid("json"));
      // A backup serves this region's claims from its pool: a scoped admin may only name
      // one of its own regions (which also keeps other regions' existence hidden from it).
      if (input.backup !== null) authorizeRegion(principal, input.backup);
      const { config, created, consistencyToken } = await putRegion(kv, clock, region, input);
      const view = { ...await describeWritten(kv, clock, config), consistencyToken };
      c.header("Allot-Consistency-Token", consistencyToken);
      return c.json(view, created ? 201 : 200);
    })
    .openapi(listRoute, async (c) => {
      const page = c.req.valid("query");
      return c.json(await listRegions(kv, clock, page, c.get("principal").regions), 200);
    })
    .openapi(getRoute, async (c) => {
      const { region } = c.req.valid("param");
      // Health evaluates the mode (a checked write), so it is always read strongly.
      return c.json(await describeRegion(kv, clock, region), 200);
    })
    .openapi(deleteRoute, async (c) => {
      const { region } = c.req.valid("param");
      const deleted = await deleteRegion(kv, region, c.get("principal").regions);
      c.header("Allot-Consistency-Token", deleted.consistencyToken);
      return c.json(deleted, 200);
    });
}
