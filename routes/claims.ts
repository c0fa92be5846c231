/** Claims: allocate (client), read, renew and release (client + secret), list and revoke (admin). */
import { createRoute, z } from "@hono/zod-openapi";
import { createClaim } from "../lib/allocate.ts";
import {
  type ClaimAccess,
  listClaims,
  releaseClaim,
  renewClaim,
  revokeClaim,
} from "../lib/claims.ts";
import { readYourWrites } from "../lib/consistency.ts";
import { claimIdRegion, claimView, getClaimEntry } from "../lib/leases.ts";
import {
  Claim,
  ClaimGrant,
  ClaimInput,
  ClaimState,
  ConsistencyToken,
  LIMITS,
  RegionName,
  RenewInput,
  RevokeInput,
} from "../lib/schemas.ts";
import { authorize, type Principal } from "../lib/auth.ts";
import type { Role } from "../lib/config.ts";
import { NotFoundError } from "../lib/errors.ts";
import {
  bearerSecurity,
  caller,
  commonProblems,
  ConsistencyHeaders,
  leaseLostProblem,
  newRouter,
  PageQuery,
  type RouteDeps,
  unavailableProblem,
} from "./_shared.ts";

const RegionParams = z.object({ region: RegionName });
const ClaimParams = z.object({
  id: z.string().max(64).openapi({ example: "iad.01JD3J3ZK6S6M2P1TQ4Z3X9V7A" }),
});
const SecretHeaders = z.object({
  "allot-claim-secret": z.string().max(256).optional().openapi({
    description: "The `secret` returned when the claim was granted.",
  }),
});
const ClaimWritten = Claim.extend({ consistencyToken: ConsistencyToken });

const createRouteDef = createRoute({
  method: "post",
  path: "/v1/regions/{region}/claims",
  tags: ["claims"],
  summary: "Claim one free slot (client)",
  description:
    "Compare-and-swap allocation. A retry with the same `Idempotency-Key` and body replays the first answer, secret included.",
  security: bearerSecurity,
  request: {
    params: RegionParams,
    headers: z.object({
      "idempotency-key": z.string().min(1).max(LIMITS.idempotencyKey).regex(/^[\x21-\x7e]+$/, {
        message: "must be 1-256 printable ASCII characters",
      }).optional(),
    }),
    body: { content: { "application/json": { schema: ClaimInput } }, required: true },
  },
  responses: {
    201: {
      description: "Granted (or replayed: see `Idempotent-Replayed`)",
      headers: z.object({
        "Allot-Served-By": z.string().openapi({ description: "Region whose pool served it" }),
      }),
      content: { "application/json": { schema: ClaimGrant } },
    },
    ...commonProblems,
    503: unavailableProblem,
  },
});

const getRoute = createRoute({
  method: "get",
  path: "/v1/claims/{id}",
  tags: ["claims"],
  summary: "A claim and its state (client, admin)",
  security: bearerSecurity,
  request: { params: ClaimParams, headers: ConsistencyHeaders },
  responses: {
    200: { description: "The claim", content: { "application/json": { schema: Claim } } },
    ...commonProblems,
  },
});

const renewRoute = createRoute({
  method: "post",
  path: "/v1/claims/{id}/renew",
  tags: ["claims"],
  summary: "Extend a live lease (client + Allot-Claim-Secret)",
  security: bearerSecurity,
  request: {
    params: ClaimParams,
    headers: SecretHeaders,
    body: { content: { "application/json": { schema: RenewInput } }, required: false },
  },
  responses: {
    200: { description: "Renewed", content: { "application/json": { schema: ClaimWritten } } },
    ...commonProblems,
    409: leaseLostProblem,
  },
});

const releaseRoute = createRoute({
  method: "delete",
  path: "/v1/claims/{id}",
  tags: ["claims"],
  summary: "Release a live lease (client + Allot-Claim-Secret)",
  security: bearerSecurity,
  request: { params: ClaimParams, headers: SecretHeaders },
  responses: {
    204: {
      description: "Released; the consistency token is in the `Allot-Consistency-Token` header",
    },
    ...commonProblems,
    409: leaseLostProblem,
  },
});

const revokeRoute = createRoute({
  method: "post",
  path: "/v1/claims/{id}/revoke",
  tags: ["claims"],
  summary: "End a live lease now (admin); its holder gets 409 afterwards",
  security: bearerSecurity,
  request: {
    params: ClaimParams,
    body: { content: { "application/json": { schema: RevokeInput } }, required: true },
  },
  responses: {
    200: { description: "Revoked", content: { "application/json": { schema: ClaimWritten } } },
    ...commonProblems,
    409: leaseLostProblem,
  },
});

const listRoute = createRoute({
  method: "get",
  path: "/v1/regions/{region}/claims",
  tags: ["claims"],
  summary: "The claims served by a region's pool (admin, client); never a secret",
  security: bearerSecurity,
  request: {
    params: RegionParams,
    query: PageQuery.extend({
      holder: z.string().max(LIMITS.holder).optional(),
      state: ClaimState.optional(),
    }),
    headers: ConsistencyHeaders,
  },
  responses: {
    200: {
      description: "A page; pass `cursor` back for the next one (null: no more)",
      content: {
        "application/json": {
          schema: z.object({ items: z.array(Claim), cursor: z.string().nullable() }),
        },
      },
    },
    ...commonProblems,
  },
});

/** The serving region of a claim id, or 404 (a malformed id names no claim). */
function regionOf(claimId: string): string {
  const region = claimIdRegion(claimId);
  if (region === null) throw new NotFoundError(`Claim "${claimId}" does not exist`);
  return region;
}

/** Region-scoped tokens act on claims asked for in their regions, wherever they were served. */
function scopedTo(principal: Principal, roles: readonly Role[]): ClaimAccess {
  return (record) => authorize(principal, roles, record.region);
}

/** Claim routes. */
export function claimRoutes({ kv, clock, allocator, ender }: RouteDeps) {
  return newRouter()
    .openapi(createRouteDef, async (c) => {
      const { region } = c.req.valid("param");
      const principal = caller(c, ["client", "admin"], region);
      const { grant, replayed } = await createClaim(kv, clock, {
        region,
        caller: principal.id,
        input: c.req.valid("json"),
        idempotencyKey: c.req.valid("header")["idempotency-key"],
      }, allocator);
      c.header("Allot-Served-By", grant.servedBy);
      c.header("Allot-Consistency-Token", grant.consistencyToken);
      if (replayed) c.header("Idempotent-Replayed", "true");
      return c.json(grant, 201);
    })
    .openapi(getRoute, async (c) => {
      const { id } = c.req.valid("param");
      const region = regionOf(id);
      caller(c, ["client", "admin"]);
      const token = c.req.valid("header")["allot-consistency-token"];
      const { value, consistency } = await readYourWrites(
        kv,
        region,
        token,
        async (level) => claimView(await getClaimEntry(kv, id, level)),
      );
      caller(c, ["client", "admin"], value.region);
      c.header("Allot-Consistency", consistency);
      return c.json(value, 200);
    })
    .openapi(renewRoute, async (c) => {
      const { id } = c.req.valid("param");
      const principal = caller(c, ["client", "admin"]);
      const { leaseMs } = RenewInput.parse(c.req.valid("json"));
      const { claim, consistencyToken } = await renewClaim(kv, clock, id, {
        secret: c.req.valid("header")["allot-claim-secret"],
        leaseMs,
        access: scopedTo(principal, ["client", "admin"]),
      });
      c.header("Allot-Consistency-Token", consistencyToken);
      return c.json({ ...claim, consistencyToken }, 200);
    })
    .openapi(releaseRoute, async (c) => {
      const { id } = c.req.valid("param");
      const principal = caller(c, ["client", "admin"]);
      const { consistencyToken } = await releaseClaim(kv, clock, id, {
        secret: c.req.valid("header")["allot-claim-secret"],
        access: scopedTo(principal, ["client", "admin"]),
      }, ender);
      c.header("Allot-Consistency-Token", consistencyToken);
      return c.body(null, 204);
    })
    .openapi(revokeRoute, async (c) => {
      const { id } = c.req.valid("param");
      const principal = caller(c, ["admin"]);
      const { reason } = c.req.valid("json");
      const { claim, consistencyToken } = await revokeClaim(kv, clock, id, {
        reason,
        access: scopedTo(principal, ["admin"]),
      });
      c.header("Allot-Consistency-Token", consistencyToken);
      return c.json({ ...claim, consistencyToken }, 200);
    })
    .openapi(listRoute, async (c) => {
      const { region } = c.req.valid("param");
      caller(c, ["admin", "client"], region);
      const { holder, state, cursor, limit } = c.req.valid("query");
      const token = c.req.valid("header")["allot-consistency-token"];
      const { value, consistency } = await readYourWrites(
        kv,
        region,
        token,
        (level) => listClaims(kv, region, { holder, state, cursor, limit }, level),
      );
      c.header("Allot-Consistency", consistency);
      return c.json(value, 200);
    });
}
