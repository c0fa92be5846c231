/** /v1/regions/{region}/dead-letters: status messages the queue gave up on (admin). */
import { createRoute } from "@hono/zod-openapi";
import {
  discardDeadLetter,
  getDeadLetter,
  listDeadLetters,
  MAX_PAGE,
} from "../lib/dead_letters.ts";
import { DeadLetter, DeadLetterSummary, MessageId } from "../lib/schemas.ts";
import {
  allow,
  bearerSecurity,
  ConsistencyTokenHeader,
  newRouter,
  PageQuery,
  pageResponse,
  problems,
  RegionParams,
  type RouteDeps,
} from "./_shared.ts";

const LetterParams = RegionParams.extend({ id: MessageId });
const ROLES =
  "**Roles:** admin (region-scoped tokens: their regions).\n\nA status message becomes a dead letter once its deliveries have all failed (about 51 s of retries), or when this version cannot read it. Its updates were never applied, and it no longer counts in the region's lag.";

const summaryExample = {
  id: "01JDKQ3V8M6Y2G5T7R9W0XCPHN",
  readable: true,
  enqueuedAt: "2026-11-24T12:00:00.000Z",
  updateCount: 1,
  resources: ["chrome-0001"],
};

const listRoute = createRoute({
  method: "get",
  path: "/v1/regions/{region}/dead-letters",
  tags: ["status"],
  operationId: "listDeadLetters",
  summary: "A page of the region's dead-lettered status messages (admin)",
  description:
    `${ROLES} Listed by message id (in order of acceptance), without their updates, at most ${MAX_PAGE} a page.`,
  security: bearerSecurity,
  middleware: [allow(["admin"], "region")],
  request: { params: RegionParams, query: PageQuery },
  responses: {
    200: pageResponse(DeadLetterSummary, summaryExample),
    ...problems(400, 401, 403, 404, 503),
  },
});

const getRoute = createRoute({
  method: "get",
  path: "/v1/regions/{region}/dead-letters/{id}",
  tags: ["status"],
  operationId: "getDeadLetter",
  summary: "One dead-lettered status message, with its updates (admin)",
  description:
    `${ROLES} To have its updates applied, report them again: an update no newer than the applied seq is a no-op.`,
  security: bearerSecurity,
  middleware: [allow(["admin"], "region")],
  request: { params: LetterParams },
  responses: {
    200: {
      description: "The dead letter",
      content: {
        "application/json": {
          schema: DeadLetter,
          example: {
            ...summaryExample,
            updates: [{ resource: "chrome-0001", seq: 42, state: "ready", load: 0.3 }],
            problem: null,
          },
        },
      },
    },
    ...problems(400, 401, 403, 404, 503),
  },
});

const deleteRoute = createRoute({
  method: "delete",
  path: "/v1/regions/{region}/dead-letters/{id}",
  tags: ["status"],
  operationId: "discardDeadLetter",
  summary: "Discard a dead letter once dealt with (admin)",
  description: `${ROLES} Dead letters are kept until discarded.`,
  security: bearerSecurity,
  middleware: [allow(["admin"], "region")],
  request: { params: LetterParams },
  responses: {
    204: {
      description: "Discarded; the consistency token is in the `Allot-Consistency-Token` header",
      headers: ConsistencyTokenHeader,
    },
    ...problems(400, 401, 403, 404, 503),
  },
});

/** Dead-letter routes. */
export function deadLetterRoutes({ kv }: RouteDeps) {
  return newRouter()
    .openapi(listRoute, async (c) => {
      const { region } = c.req.valid("param");
      return c.json(await listDeadLetters(kv, region, c.req.valid("query")), 200);
    })
    .openapi(getRoute, async (c) => {
      const { region, id } = c.req.valid("param");
      return c.json(await getDeadLetter(kv, region, id), 200);
    })
    .openapi(deleteRoute, async (c) => {
      const { region, id } = c.req.valid("param");
      c.header("Allot-Consistency-Token", await discardDeadLetter(kv, region, id));
      return c.body(null, 204);
    });
}
