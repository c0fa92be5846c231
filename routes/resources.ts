/** /v1/regions/{region}/resources: the pool's members (admin or agent write, any role reads). */
import { createRoute } from "@hono/zod-openapi";
import { readYourWrites } from "../lib/consistency.ts";
import { deleteResource, getResource, listResources, putResource } from "../lib/resources.ts";
import { ConsistencyToken, Resource, ResourceId, ResourceInput } from "../lib/schemas.ts";
import { resourceExample } from "./_examples.ts";
import {
  allow,
  bearerSecurity,
  ConsistencyHeaders,
  ConsistencyServedHeader,
  ConsistencyTokenHeader,
  newRouter,
  PageQuery,
  pageResponse,
  problems,
  RegionParams,
  type RouteDeps,
  tokenOnlyResponse,
} from "./_shared.ts";

const ResourceParams = RegionParams.extend({ id: ResourceId });
const ResourceWritten = Resource.extend({ consistencyToken: ConsistencyToken });
const resourceWrittenExample = { ...resourceExample, consistencyToken: "000000000000000d0000" };

const putRoute = createRoute({
  method: "put",
  path: "/v1/regions/{region}/resources/{id}",
  tags: ["resources"],
  operationId: "putResource",
  summary: "Register or replace a resource (admin, agent)",
  description:
    "**Roles:** admin, agent (region-scoped tokens: their regions).\n\nA direct write, outside the status queue; every field is optional (`slots` 1, `labels` {}, `state` `ready`). Changing slots or state never frees a slot a live lease holds. `gone` marks its live leases lost.",
  security: bearerSecurity,
  middleware: [allow(["admin", "agent"], "region")],
  request: {
    params: ResourceParams,
    body: {
      content: {
        "application/json": {
          schema: ResourceInput,
          example: { slots: 2, labels: { browser: "chromium" }, state: "ready" },
        },
      },
      required: false,
    },
  },
  responses: {
    200: {
      description: "Updated",
      headers: ConsistencyTokenHeader,
      content: { "application/json": { schema: ResourceWritten, example: resourceWrittenExample } },
    },
    201: {
      description: "Registered",
      headers: ConsistencyTokenHeader,
      content: { "application/json": { schema: ResourceWritten, example: resourceWrittenExample } },
    },
    ...problems(400, 401, 403, 404, 413, 415, 422, 503),
  },
});

const deleteRoute = createRoute({
  method: "delete",
  path: "/v1/regions/{region}/resources/{id}",
  tags: ["resources"],
  operationId: "deleteResource",
  summary: "Remove a resource (admin, agent); its live leases become lost",
  description:
    "**Roles:** admin, agent (region-scoped tokens: their regions).\n\nIts live leases end in state `lost`; their holders get 409 on renew and release. Its status seqs are kept for 24 hours: only a status update with a higher `seq` registers it again.",
  security: bearerSecurity,
  middleware: [allow(["admin", "agent"], "region")],
  request: { params: ResourceParams },
  responses: {
    200: tokenOnlyResponse("Removed"),
    ...problems(400, 401, 403, 404, 503),
  },
});

const listRoute = createRoute({
  method: "get",
  path: "/v1/regions/{region}/resources",
  tags: ["resources"],
  operationId: "listResources",
  summary: "A page of the region's resources, in id order (any role)",
  description:
    "**Roles:** admin, agent, client (region-scoped tokens: their regions).\n\nHonours `Allot-Consistency-Token` (read-your-writes).",
  security: bearerSecurity,
  middleware: [allow(["admin", "agent", "client"], "region")],
  request: { params: RegionParams, query: PageQuery, headers: ConsistencyHeaders },
  responses: {
    200: { ...pageResponse(Resource, resourceExample), headers: ConsistencyServedHeader },
    ...problems(400, 401, 403, 404, 503),
  },
});

const getRoute = createRoute({
  method: "get",
  path: "/v1/regions/{region}/resources/{id}",
  tags: ["resources"],
  operationId: "getResource",
  summary: "One resource (any role)",
  description:
    "**Roles:** admin, agent, client (region-scoped tokens: their regions).\n\nHonours `Allot-Consistency-Token` (read-your-writes).",
  security: bearerSecurity,
  middleware: [allow(["admin", "agent", "client"], "region")],
  request: { params: ResourceParams, headers: ConsistencyHeaders },
  responses: {
    200: {
      description: "The resource",
      headers: ConsistencyServedHeader,
      content: { "application/json": { schema: Resource, example: resourceExample } },
    },
    ...problems(400, 401, 403, 404, 503),
  },
});

/** Resource routes. */
export function resourceRoutes({ kv, clock }: RouteDeps) {
  return newRouter()
    .openapi(putRoute, async (c) => {
      const { region, id } = c.req.valid("param");
      const input = ResourceInput.parse(c.req.valid("json"));
      const { resource, created, consistencyToken } = await putResource(
        kv,
        clock,
        region,
        id,
        input,
      );
      c.header("Allot-Consistency-Token", consistencyToken);
      return c.json({ ...resource, consistencyToken }, created ? 201 : 200);
    })
    .openapi(deleteRoute, async (c) => {
      const { region, id } = c.req.valid("param");
      const deleted = await deleteResource(kv, clock, region, id);
      c.header("Allot-Consistency-Token", deleted.consistencyToken);
      return c.json(deleted, 200);
    })
    .openapi(listRoute, async (c) => {
      const { region } = c.req.valid("param");
      const page = c.req.valid("query");
      const token = c.req.valid("header")["allot-consistency-token"];
      const { value, consistency } = await readYourWrites(
        kv,
        region,
        token,
        (level) => listResources(kv, region, page, level),
      );
      c.header("Allot-Consistency", consistency);
      return c.json(value, 200);
    })
    .openapi(getRoute, async (c) => {
      const { region, id } = c.req.valid("param");
      const token = c.req.valid("header")["allot-consistency-token"];
      const { value, consistency } = await readYourWrites(
        kv,
        region,
        token,
        (level) => getResource(kv, region, id, level),
      );
      c.header("Allot-Consistency", consistency);
      return c.json(value, 200);
    });
}
