/** POST /v1/regions/{region}/status: the data plane reports (agent, only for its regions). */
import { createRoute, z } from "@hono/zod-openapi";
import { ingestStatus } from "../lib/status.ts";
import { ConsistencyToken, MAX_STATUS_UPDATES, RegionName, StatusBatch } from "../lib/schemas.ts";
import {
  bearerSecurity,
  caller,
  commonProblems,
  newRouter,
  type RouteDeps,
  unavailableProblem,
} from "./_shared.ts";

const Accepted = z.object({
  accepted: z.number().int().openapi({ description: "Updates made durable in the queue." }),
  messages: z.number().int(),
  consistencyToken: ConsistencyToken,
}).openapi("StatusAccepted");

const postRoute = createRoute({
  method: "post",
  path: "/v1/regions/{region}/status",
  tags: ["status"],
  summary: "Report a batch of resource status updates (agent)",
  description:
    `Up to ${MAX_STATUS_UPDATES} updates. The batch is validated whole (one bad update rejects it, naming its index and field) and answered 202 once durable in the queue; updates are applied asynchronously, idempotently by per-resource seq.`,
  security: bearerSecurity,
  request: {
    params: z.object({ region: RegionName }),
    body: { content: { "application/json": { schema: StatusBatch } }, required: true },
  },
  responses: {
    202: {
      description: "Durable in the queue",
      content: { "application/json": { schema: Accepted } },
    },
    ...commonProblems,
    503: unavailableProblem,
  },
});

/** Status routes. */
export function statusRoutes({ kv, clock }: RouteDeps) {
  return newRouter().openapi(postRoute, async (c) => {
    const { region } = c.req.valid("param");
    caller(c, ["agent", "admin"], region);
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
