/**
 * Examples for the OpenAPI document, taken from real answers. tests/openapi_test.ts
 * parses each against the schema it illustrates, so they cannot drift from the code.
 */

const AT = "2026-01-01T00:00:00.000Z";

/** A region as GET /v1/regions/{region} describes it, in fallback after a lag spike. */
export const regionExample = {
  name: "iad",
  backup: "fra",
  lag: { enterMs: 2000, exitMs: 500 },
  lease: { defaultMs: 60000, maxMs: 3600000 },
  updatedAt: AT,
  mode: "fallback",
  modeSince: "2026-01-01T00:00:02.001Z",
  modeReason: 'lag 2001ms > enterMs 2000ms: claims served by "fra"',
  modeHistory: [{
    at: "2026-01-01T00:00:02.001Z",
    from: "primary",
    to: "fallback",
    reason: 'lag 2001ms > enterMs 2000ms: claims served by "fra"',
    lagMs: 2001,
  }],
  lagMs: 2001,
  pending: 48,
  deadLettered: 0,
  total: 64,
  free: 40,
  claimed: 24,
} as const;

/** A region's answer to PUT /v1/regions/{region}. */
export const regionWrittenExample = {
  ...regionExample,
  mode: "primary",
  modeSince: AT,
  modeReason: "created",
  modeHistory: [],
  lagMs: 0,
  pending: 0,
  total: 0,
  free: 0,
  claimed: 0,
  consistencyToken: "00000000000000080000",
} as const;

/** A resource as read back. */
export const resourceExample = {
  id: "chrome-0001",
  region: "iad",
  slots: 2,
  labels: { browser: "chromium" },
  state: "ready",
  seq: 42,
  load: 0.4,
  claimed: 1,
  updatedAt: AT,
} as const;

/** A live claim as GET /v1/claims/{id} reads it. */
export const claimExample = {
  id: "iad.01M850JC60FYVGM60V1PFS2T4Q",
  region: "iad",
  servedBy: "iad",
  resource: "chrome-0001",
  slot: 0,
  holder: "worker-7",
  state: "active",
  fencingToken: "000000000000001100000000",
  leaseMs: 60000,
  createdAt: AT,
  leaseExpiresAt: "2026-01-01T00:01:00.000Z",
  endedAt: null,
  reason: null,
} as const;

/** The answer to a claim: the lease, how it was routed, and its secret. */
export const grantExample = {
  ...claimExample,
  mode: "primary",
  lagMs: 0,
  note: null,
  secret: "MvhrJJMok1aNHJ_gV9R0dNURB_Ql_VGfTTD4TX5nWNs",
  consistencyToken: "00000000000000110000",
} as const;

/** A claim after a write (renew), with the write's consistency token. */
export const claimWrittenExample = {
  ...claimExample,
  consistencyToken: "00000000000000170000",
} as const;

/** A claim an admin revoked. */
export const revokedExample = {
  ...claimExample,
  state: "lost",
  endedAt: "2026-01-01T00:00:02.500Z",
  reason: "revoked: maintenance",
  consistencyToken: "00000000000000250000",
} as const;

/** A status batch from an agent. */
export const statusBatchExample = {
  updates: [
    { resource: "chrome-0001", seq: 43, state: "ready", load: 0.4 },
    { resource: "chrome-0002", seq: 17, state: "draining" },
  ],
} as const;

/** Problem documents, one per kind of failure. */
export const problemExamples = {
  400: {
    type: "urn:allot:problem:bad-request",
    title: "Bad request",
    status: 400,
    detail: "Malformed JSON in request body",
    field: "body",
    errors: [{ field: "body", message: "is not valid JSON" }],
  },
  401: {
    type: "urn:allot:problem:unauthorized",
    title: "Unauthorized",
    status: 401,
    detail: "The bearer token is not recognised",
  },
  403: {
    type: "urn:allot:problem:forbidden",
    title: "Forbidden",
    status: 403,
    detail: 'Role "agent" cannot do this; it needs one of: client, admin',
  },
  404: {
    type: "urn:allot:problem:not-found",
    title: "Not found",
    status: 404,
    detail: 'Region "iad" does not exist',
  },
  409: {
    type: "urn:allot:problem:lease-lost",
    title: "Lease lost",
    status: 409,
    detail: 'Claim "iad.01M850JC60FYVGM60V1PFS2T4Q" is no longer active: its lease expired',
  },
  413: {
    type: "urn:allot:problem:too-large",
    title: "Payload too large",
    status: 413,
    detail: "Request body too large: bodies are limited to 65536 bytes",
    field: "body",
    errors: [{ field: "body", message: "is too large" }],
  },
  415: {
    type: "urn:allot:problem:unsupported-media-type",
    title: "Unsupported media type",
    status: 415,
    detail: "Content-Type must be application/json or another +json type",
    field: "Content-Type",
    errors: [{ field: "Content-Type", message: "must be application/json or another +json type" }],
  },
  422: {
    type: "urn:allot:problem:validation",
    title: "Invalid request",
    status: 422,
    detail: "Invalid request body: lag.exitMs must be less than lag.enterMs",
    field: "lag.exitMs",
    errors: [{ field: "lag.exitMs", message: "must be less than lag.enterMs" }],
  },
  503: {
    type: "urn:allot:problem:no-capacity",
    title: "No capacity",
    status: 503,
    detail: 'Cannot claim in region "iad": no ready resource has a free slot',
  },
} as const;

/** The 409 of a deletion refused because something still uses the thing deleted. */
export const inUseExample = {
  type: "urn:allot:problem:in-use",
  title: "Still in use",
  status: 409,
  detail: 'Cannot delete region "iad": it still has resources (delete them first)',
} as const;
