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
import { claimIdRegion, claimNotFound, claimView, getClaimEntry } from "../lib/leases.ts";
import {
  Claim,
  ClaimGrant,
  ClaimInput,
  ClaimState,
  ConsistencyToken,
  LIMITS,
  RenewInput,
  RevokeInput,
} from "../lib/schemas.ts";
import { authorizeClaim, type Principal } from "../lib/auth.ts";
import { claimExample, claimWrittenExample, grantExample, revokedExample } from "./_examples.ts";
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
} from "./_shared.ts";

const ClaimParams = z.object({
  id: z.string().max(64).openapi({ example: "iad.01JD3J3ZK6S6M2P1TQ4Z3X9V7A" }),
});
const SecretHeaders = z.object({
  // Required in the document, optional to the validator: without it the answer is the
  // 403 of a wrong secret, not a 400, so a caller learns nothing of the claim either way.
  "allot-claim-secret": z.string().max(256).optional().openapi({
    param: { required: true },
    description:
      "`Allot-Claim-Secret`: the `secret` returned when the claim was granted. Without it, or with another, the answer is 403.",
    example: grantExample.secret,
  }),
});
const ClaimWritten = Claim.extend({ consistencyToken: ConsistencyToken });

const createRouteDef = createRoute({
  method: "post",
  path: "/v1/regions/{region}/claims",
  tags: ["claims"],
  operationId: "createClaim",
  summary: "Claim one free slot (client)",
  description:
    "**Roles:** client, admin (region-scoped tokens: their regions).\n\nCompare-and-swap allocation of one slot of a `ready` resource carrying all the asked `labels`. In `fallback` mode the backup region's pool serves it (`servedBy`). A retry with the same `Idempotency-Key`, caller and body replays the first answer, secret included; the key is remembered at least as long as the lease. Keep the `secret`: renew and release need it.",
  security: bearerSecurity,
  middleware: [allow(["client", "admin"], "region")],
  request: {
    params: RegionParams,
    headers: z.object({
      "idempotency-key": z.string().min(1).max(LIMITS.idempotencyKey).regex(/^[\x21-\x7e]+$/, {
        message: "must be 1-256 visible ASCII characters (no spaces)",
      }).optional().openapi({
        description:
          "`Idempotency-Key`: retrying with the same key (same caller, same body) returns the same claim, never a second one. The same key with another body is 422 naming `Idempotency-Key`.",
        example: "job-8f14e45f-attempt",
      }),
    }),
    body: {
      content: {
        "application/json": {
          schema: ClaimInput,
          example: { holder: "worker-7", leaseMs: 60000, labels: { browser: "chromium" } },
        },
      },
      required: true,
    },
  },
  responses: {
    201: {
      description: "Granted (or replayed: see `Idempotent-Replayed`)",
      headers: ConsistencyTokenHeader.extend({
        Location: z.string().openapi({
          description: "The claim's own URL (`GET`, `DELETE`; `/renew`)",
          example: "/v1/claims/iad.01JD3J3ZK6S6M2P1TQ4Z3X9V7A",
        }),
        "Allot-Served-By": z.string().openapi({
          description: "Region whose pool served it",
          example: "iad",
        }),
        "Idempotent-Replayed": z.literal("true").optional().openapi({
          description: "Present when this answer replays an earlier one for the same key",
        }),
        "Allot-Claim-State": z.enum([...ClaimState.options, "ended"]).optional().openapi({
          description:
            "With `Idempotent-Replayed`: the claim's state now. The replayed body says `active` as it did first, but the lease may since have been released, revoked (`lost`) or run out (`expired`): its slot may then be someone else's, and renew and release get 409. `ended`: its record is gone (an ended claim is kept 2 hours, its key until 24 hours after its lease's expiry).",
          example: "active",
        }),
      }),
      content: { "application/json": { schema: ClaimGrant, example: grantExample } },
    },
    ...problems(400, 401, 403, 404, 413, 415, 422, 503),
  },
});

const getRoute = createRoute({
  method: "get",
  path: "/v1/claims/{id}",
  tags: ["claims"],
  operationId: "getClaim",
  summary: "A claim and its state (client, admin)",
  description:
    "**Roles:** client, admin (region-scoped tokens: claims asked for in their regions).\n\nState is `active`, `released`, `expired` or `lost`; an ended claim stays readable for at least an hour. Never shows the secret. Honours `Allot-Consistency-Token` (read-your-writes).",
  security: bearerSecurity,
  middleware: [allow(["client", "admin"])],
  request: { params: ClaimParams, headers: ConsistencyHeaders },
  responses: {
    200: {
      description: "The claim",
      headers: ConsistencyServedHeader,
      content: { "application/json": { schema: Claim, example: claimExample } },
    },
    ...problems(400, 401, 403, 404, 503),
  },
});

const renewRoute = createRoute({
  method: "post",
  path: "/v1/claims/{id}/renew",
  tags: ["claims"],
  operationId: "renewClaim",
  summary: "Extend a live lease (client + Allot-Claim-Secret)",
  description:
    "**Roles:** client, admin, with the claim's `Allot-Claim-Secret`.\n\nThe lease runs `leaseMs` from now (default: the claim's current `leaseMs`; clamped to the region's `lease.maxMs`). 409 once the lease has ended: the slot may already be someone else's.",
  security: bearerSecurity,
  middleware: [allow(["client", "admin"])],
  request: {
    params: ClaimParams,
    headers: SecretHeaders,
    body: {
      content: { "application/json": { schema: RenewInput, example: { leaseMs: 60000 } } },
      required: false,
    },
  },
  responses: {
    200: {
      description: "Renewed",
      headers: ConsistencyTokenHeader,
      content: { "application/json": { schema: ClaimWritten, example: claimWrittenExample } },
    },
    ...problems(400, 401, 403, 404, 409, 413, 415, 422, 503),
  },
});

const releaseRoute = createRoute({
  method: "delete",
  path: "/v1/claims/{id}",
  tags: ["claims"],
  operationId: "releaseClaim",
  summary: "Release a live lease (client + Allot-Claim-Secret)",
  description:
    "**Roles:** client, admin, with the claim's `Allot-Claim-Secret`.\n\nThe slot is free again at once; the claim ends in state `released`. Safe to resend: a claim already released answers 204 again, with the release's consistency token. 409 when the lease ended some other way (expired, revoked, resource gone).",
  security: bearerSecurity,
  middleware: [allow(["client", "admin"])],
  request: { params: ClaimParams, headers: SecretHeaders },
  responses: {
    204: {
      description: "Released; the consistency token is in the `Allot-Consistency-Token` header",
      headers: ConsistencyTokenHeader,
    },
    ...problems(400, 401, 403, 404, 409, 503),
  },
});

const revokeRoute = createRoute({
  method: "post",
  path: "/v1/claims/{id}/revoke",
  tags: ["claims"],
  operationId: "revokeClaim",
  summary: "End a live lease now (admin); its holder gets 409 afterwards",
  description:
    "**Role:** admin (region-scoped tokens: claims asked for in their regions).\n\nThe claim ends in state `lost` with the `reason` (prefixed `revoked: `); its slot is free at once. A lease already past its expiry is recorded `expired` instead, and the answer is 409.",
  security: bearerSecurity,
  middleware: [allow(["admin"])],
  request: {
    params: ClaimParams,
    body: {
      content: {
        "application/json": { schema: RevokeInput, example: { reason: "maintenance" } },
      },
      required: true,
    },
  },
  responses: {
    200: {
      description: "Revoked",
      headers: ConsistencyTokenHeader,
      content: { "application/json": { schema: ClaimWritten, example: revokedExample } },
    },
    ...problems(400, 401, 403, 404, 409, 413, 415, 422, 503),
  },
});

const listRoute = createRoute({
  method: "get",
  path: "/v1/regions/{region}/claims",
  tags: ["claims"],
  operationId: "listClaims",
  summary: "The claims served by a region's pool (admin, client); never a secret",
  description:
    "**Roles:** admin, client (region-scoped tokens: their regions, and among the claims there those asked for in their regions, as for `GET /v1/claims/{id}`).\n\nWho holds what: filter by `holder` and `state`, page with `cursor`. A filtered page scans at most 10 × `limit` claims (newest id last), so it may hold fewer than `limit` and still have a cursor; `state=active` reads the region's lease index instead (soonest expiry first), so its pages are full while more claims are active. Honours `Allot-Consistency-Token` (read-your-writes).",
  security: bearerSecurity,
  middleware: [allow(["admin", "client"], "region")],
  request: {
    params: RegionParams,
    query: PageQuery.extend({
      holder: z.string().min(1).max(LIMITS.holder).optional().openapi({
        description: "Only this holder's claims.",
        example: "worker-7",
      }),
      state: ClaimState.optional().openapi({ description: "Only claims in this state." }),
    }),
    headers: ConsistencyHeaders,
  },
  responses: {
    200: { ...pageResponse(Claim, claimExample), headers: ConsistencyServedHeader },
    ...problems(400, 401, 403, 404, 503),
  },
});

/** The serving region of a claim id, or 404 (a malformed id names no claim). */
function regionOf(claimId: string): string {
  const region = claimIdRegion(claimId);
  if (region === null) throw claimNotFound(claimId);
  return region;
}

/** Region-scoped tokens act on claims asked for in their regions, wherever they were served. */
function scopedTo(principal: Principal): ClaimAccess {
  return (record) => authorizeClaim(principal, record.id, record.region);
}

/** Claim routes. */
export function claimRoutes({ kv, clock, allocator, ender, renewer }: RouteDeps) {
  return newRouter()
    .openapi(createRouteDef, async (c) => {
      const { region } = c.req.valid("param");
      const principal = c.get("principal");
      const { grant, replayed, stateNow } = await createClaim(kv, clock, {
        region,
        caller: principal.id,
        input: c.req.valid("json"),
        idempotencyKey: c.req.valid("header")["idempotency-key"],
      }, allocator);
      c.header("Location", `/v1/claims/${grant.id}`);
      c.header("Allot-Served-By", grant.servedBy);
      c.header("Allot-Consistency-Token", grant.consistencyToken);
      if (replayed) c.header("Idempotent-Replayed", "true");
      if (stateNow) c.header("Allot-Claim-State", stateNow);
      return c.json(grant, 201);
    })
    .openapi(getRoute, async (c) => {
      const { id } = c.req.valid("param");
      const region = regionOf(id);
      const principal = c.get("principal");
      // A token scoped away from the serving region may still read a claim asked in one of
      // its regions (served by a backup), but never waits on that region's replica: how long
      // it waited would tell whether the region exists and when it was last written.
      const token = principal.regions?.has(region) === false
        ? undefined
        : c.req.valid("header")["allot-consistency-token"];
      const { value, consistency } = await readYourWrites(
        kv,
        region,
        token,
        async (level) => claimView(await getClaimEntry(kv, id, level), clock.now()),
      );
      authorizeClaim(principal, value.id, value.region);
      c.header("Allot-Consistency", consistency);
      return c.json(value, 200);
    })
    .openapi(renewRoute, async (c) => {
      const { id } = c.req.valid("param");
      const principal = c.get("principal");
      const { leaseMs } = RenewInput.parse(c.req.valid("json"));
      const { claim, consistencyToken } = await renewClaim(kv, clock, id, {
        secret: c.req.valid("header")["allot-claim-secret"],
        leaseMs,
        access: scopedTo(principal),
      }, renewer);
      c.header("Allot-Consistency-Token", consistencyToken);
      return c.json({ ...claim, consistencyToken }, 200);
    })
    .openapi(releaseRoute, async (c) => {
      const { id } = c.req.valid("param");
      const principal = c.get("principal");
      const { consistencyToken } = await releaseClaim(kv, clock, id, {
        secret: c.req.valid("header")["allot-claim-secret"],
        access: scopedTo(principal),
      }, ender);
      c.header("Allot-Consistency-Token", consistencyToken);
      return c.body(null, 204);
    })
    .openapi(revokeRoute, async (c) => {
      const { id } = c.req.valid("param");
      const principal = c.get("principal");
      const { reason } = c.req.valid("json");
      const { claim, consistencyToken } = await revokeClaim(kv, clock, id, {
        reason,
        access: scopedTo(principal),
      });
      c.header("Allot-Consistency-Token", consistencyToken);
      return c.json({ ...claim, consistencyToken }, 200);
    })
    .openapi(listRoute, async (c) => {
      const { region } = c.req.valid("param");
      const principal = c.get("principal");
      const { holder, state, cursor, limit } = c.req.valid("query");
      const askedIn = principal.regions;
      const token = c.req.valid("header")["allot-consistency-token"];
      const { value, consistency } = await readYourWrites(
        kv,
        region,
        token,
        (level) => listClaims(kv, clock, region, { holder, state, cursor, limit, askedIn }, level),
      );
      c.header("Allot-Consistency", consistency);
      return c.json(value, 200);
    });
}
