/** POST /v1/regions/{region}/status: the data plane reports (agent, only for its regions). */
import { createRoute, z } from "@hono/zod-openapi";
import { ingestStatus } from "../lib/status.ts";
import { ConsistencyToken, MAX_STATUS_UPDATES, StatusBatch } from "../lib/schemas.ts";
import { statusBatchExample } from "./_examples.ts";
import {
  allow,
  bearerSecurity,
  ConsistencyTokenHeader,
  newRouter,
  problems,
  RegionParams,
  type RouteDeps,
} from "./_shared.ts";

const Accepted = z.object({
  accepted: z.number().int().openapi({ description: "Updates made durable in the queue." }),
  messages: z.number().int().openapi({ description: "Queue messages the batch was split into." }),
  consistencyToken: ConsistencyToken.openapi({
    description:
      "Dates the enqueue: a read presenting it sees the batch in the region's `pending`; the updates reach the resources within the region's lag.",
  }),
}).openapi("StatusAccepted");

const postRoute = createRoute({
  method: "post",
  path: "/v1/regions/{region}/status",
  tags: ["status"],
  operationId: "reportStatus",
  summary: "Report a batch of resource status updates (agent)",
  description:
    `**Roles:** agent, admin (region-scoped tokens: only their regions).\n\nUp to ${MAX_STATUS_UPDATES} updates. The batch is validated whole (one bad update rejects it, naming its index and field) and answered 202 once durable in the queue; updates are applied asynchronously, idempotently by per-resource seq (replays and reorderings are harmless). Until they are applied the region's \`lagMs\` grows; past \`lag.enterMs\` its new claims move to its backup. 503 + \`Retry-After\` while the region's backlog is over its bound (100,000 updates).`,
  security: bearerSecurity,
  middleware: [allow(["agent", "admin"], "region", "status batch")],
  request: {
    params: RegionParams,
    body: {
      content: { "application/json": { schema: StatusBatch, example: statusBatchExample } },
      required: true,
    },
  },
  responses: {
    202: {
      description: "Durable in the queue",
      headers: ConsistencyTokenHeader,
      content: {
        "application/json": {
          schema: Accepted,
          example: { accepted: 2, messages: 1, consistencyToken: "000000000000001e0000" },
        },
      },
    },
    ...problems(400, 401, 403, 404, 413, 415, 422, 503),
  },
});

/** Status routes. */
export function statusRoutes({ kv, clock }: RouteDeps) {
  return newRouter().openapi(postRoute, async (c) => {
    const { region } = c.req.valid("param");
    const { accepted, messages, consistencyToken } = await ingestStatus(
      kv,
      clock,
      region,
      c.req.valid("json").updates,
    );
    c.header("Allot-Consistency-Token", consistencyToken);
    return c.json({ accepted, messages: messages.length, consistencyToken }, 202);
  });
}
