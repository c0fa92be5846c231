/** What every route file shares: the router factory, auth helpers, and the error contract. */
import { OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context, MiddlewareHandler, Next } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { authorize, type Principal } from "../lib/auth.ts";
import type { Allocator } from "../lib/allocate.ts";
import type { Clock } from "../lib/clock.ts";
import type { LeaseEnder } from "../lib/leases.ts";
import type { Renewer } from "../lib/claims.ts";
import type { Role } from "../lib/config.ts";
import {
  BadRequestError,
  type FieldIssue,
  ForbiddenError,
  UnavailableError,
  ValidationError,
} from "../lib/errors.ts";
import { log } from "../lib/log.ts";
import { ConsistencyToken, Problem, RegionName } from "../lib/schemas.ts";
import { inUseExample, problemExamples } from "./_examples.ts";

/** Hono environment: the authenticated caller is set by the auth middleware. */
export type AppEnv = { Variables: { principal: Principal } };

/** What route factories receive. */
export interface RouteDeps {
  kv: Deno.Kv;
  clock: Clock;
  /** Group commit for claims, one per app instance. */
  allocator: Allocator;
  /** Group commit for releases, one per app instance. */
  ender: LeaseEnder;
  /** Group commit for renews, one per app instance. */
  renewer: Renewer;
}

/** Turns zod issues into field issues named as the caller wrote them. */
export function fieldIssues(issues: readonly z.core.$ZodIssue[], prefix = ""): FieldIssue[] {
  return issues.flatMap((issue) => {
    const path = issue.path.map(String);
    const named = (parts: string[]) =>
      [prefix, ...parts].filter((p) => p !== "").join(".") || "body";
    if (issue.code === "unrecognized_keys") {
      return issue.keys.map((key) => ({
        field: named([...path, key]),
        message: "is not a known field",
      }));
    }
    // A bad record key: its own schema's message says what a key may be, zod's does not.
    if (issue.code === "invalid_key") {
      return [{ field: named(path), message: issue.issues.map((i) => i.message).join("; ") }];
    }
    return [{ field: named(path), message: issue.message }];
  });
}

/** Most issues a problem lists: a body of thousands of bad keys gets a small answer. */
const REPORTED_ISSUES = 20;
/** Issues the problem's `detail` spells out; `errors` holds up to REPORTED_ISSUES. */
const DETAILED_ISSUES = 5;

/**
 * The issues a problem reports (the first REPORTED_ISSUES) and its detail line: the first
 * few, then how many more there are.
 */
export function reportIssues(issues: FieldIssue[]): { reported: FieldIssue[]; summary: string } {
  const listed = issues.slice(0, DETAILED_ISSUES).map((i) => `${i.field} ${i.message}`);
  const more = issues.length - listed.length;
  return {
    reported: issues.slice(0, REPORTED_ISSUES),
    summary: listed.join("; ") + (more > 0 ? `; and ${more.toLocaleString("en-US")} more` : ""),
  };
}

/** The header every 503 carries. */
export const RetryAfterHeaders = z.object({
  "Retry-After": z.string().openapi({
    description: "Whole seconds to wait before retrying.",
    example: "1",
  }),
});

const HEADER_NAMES: Record<string, string> = {
  "idempotency-key": "Idempotency-Key",
  "allot-claim-secret": "Allot-Claim-Secret",
  "allot-consistency-token": "Allot-Consistency-Token",
};

/** Invalid bodies are 422; invalid paths, queries and headers are 400. */
function validationHook(
  result: { success: boolean; target: string; error?: z.ZodError },
  _c: Context,
): void {
  if (result.success || !result.error) return;
  const issues = fieldIssues(result.error.issues).map((issue) =>
    result.target === "header"
      ? { ...issue, field: HEADER_NAMES[issue.field] ?? issue.field }
      : issue
  );
  const { reported, summary } = reportIssues(issues);
  if (result.target === "json") {
    throw new ValidationError(`Invalid request body: ${summary}`, reported);
  }
  throw new BadRequestError(
    `Invalid ${result.target === "param" ? "path" : result.target}: ${summary}`,
    reported,
  );
}

/** A router whose validation failures become problem+json. */
export function newRouter(): OpenAPIHono<AppEnv> {
  return new OpenAPIHono<AppEnv>({ defaultHook: validationHook });
}

/** Largest request body accepted, in bytes; status batches may be larger. */
export const MAX_BODY_BYTES = 64 * 1024;
export const MAX_STATUS_BODY_BYTES = 512 * 1024;

/** 413 for a body over `maxSize` bytes. */
function sizeLimit(maxSize: number): MiddlewareHandler {
  const tooLarge = () => {
    throw new HTTPException(413, {
      message: `Request body too large: bodies are limited to ${maxSize} bytes`,
    });
  };
  const streamed = bodyLimit({ maxSize, onError: tooLarge });
  // A plain Content-Length settles it without opening the body as a stream, as bodyLimit
  // would (a stream costs the later JSON read its fast path). Anything else (chunked,
  // repeated or odd lengths) goes through bodyLimit.
  return (c, next) => {
    const length = c.req.header("content-length");
    if (
      length === undefined || !/^\d+$/.test(length) ||
      c.req.header("transfer-encoding") !== undefined
    ) {
      return streamed(c, next);
    }
    return Number(length) > maxSize ? tooLarge() : next();
  };
}

/** How the route validators (@hono/zod-openapi) accept a JSON Content-Type, else 415. */
const VALIDATED_JSON_TYPE = /^application\/([a-z-.]+\+)?json(;\s*[a-zA-Z0-9-]+=([^;]+))*$/i;

/**
 * Rewrites a JSON Content-Type written with the spaces HTTP allows before its `;` (and, more
 * leniently, around `=`), such as `application/json ; charset=utf-8`, as the route
 * validators read it: they would refuse it with 415. Any other type is left to them.
 */
function canonicalJsonType(c: Context): void {
  const type = c.req.header("content-type");
  if (type === undefined || VALIDATED_JSON_TYPE.test(type)) return;
  // HTTP's whitespace is spaces and tabs only (trim() would also take a no-break space).
  const [essence, ...params] = type.split(";").map((part) => part.replace(/^[ \t]+|[ \t]+$/g, ""));
  if (!/^application\/([a-z-.]+\+)?json$/i.test(essence)) return;
  const canonical = [essence, ...params.filter(Boolean).map((p) => p.replace(/\s*=\s*/, "="))]
    .join("; ");
  if (!VALIDATED_JSON_TYPE.test(canonical)) return;
  const headers = new Headers(c.req.raw.headers); // a served request's are immutable
  headers.set("content-type", canonical);
  c.req.raw = new Request(c.req.raw, { headers });
}

/** How Deno fails a body read when the connection breaks or the server begins to stop. */
const BODY_READ_FAILURES = [
  Deno.errors.BadResource,
  Deno.errors.Http,
  Deno.errors.ConnectionReset,
  Deno.errors.ConnectionAborted,
  Deno.errors.UnexpectedEof,
];
const isReadFailure = (error: unknown) => BODY_READ_FAILURES.some((kind) => error instanceof kind);

function unreadBody(failure: unknown): UnavailableError {
  log("warn", "a request body could not be read", { error: String(failure) });
  return new UnavailableError(
    "Cannot read the request body: the connection failed or the server is stopping; retry",
    1,
  );
}

/**
 * Runs `limit` and the route, answering 503 + Retry-After where Deno could not read a body
 * at all (the connection broke, or the server began stopping while the body was on its
 * way): the route's validator would call that "Malformed JSON", a 400 that tells the client
 * not to retry, and a chunked body's size check would throw it as a 500.
 */
async function unreadBodyIsUnavailable(
  c: Context,
  limit: MiddlewareHandler,
  next: Next,
): Promise<void> {
  let checked = false;
  try {
    await limit(c, () => {
      checked = true;
      return next();
    });
  } catch (error) {
    // The size check's own read of a chunked body failed.
    if (!checked && isReadFailure(error)) throw unreadBody(error);
    throw error;
  }
  // An untyped body that no header announced (HTTP/2 need not): the validators' media-type
  // check read it, and failed.
  if (c.req.header("content-type") === undefined && isReadFailure(c.error)) {
    throw unreadBody(c.error);
  }
  // The validator's 400 has already become the answer (Hono keeps its error in c.error);
  // Hono also keeps the route's read of the body, as a promise.
  const read = c.req.bodyCache.text;
  if (!(c.error instanceof HTTPException) || c.error.status !== 400 || read === undefined) return;
  const failure = await Promise.resolve(read).then(() => null, (failure: unknown) => failure);
  if (isReadFailure(failure)) throw unreadBody(failure);
}

/**
 * Whether a body comes without a Content-Type: it is refused with 415 before anything reads
 * it (the route validators would read it whole to refuse it, and could fail reading it).
 */
function untypedBody(c: Context): boolean {
  if (c.req.header("content-type") !== undefined) return false;
  // Deno.serve gives every POST and PUT a body stream, even an empty one (read as `{}`):
  // the framing says whether one comes.
  const length = c.req.header("content-length");
  return c.req.header("transfer-encoding") !== undefined ||
    (length !== undefined && length.trim() !== "0");
}

const statusLimit = sizeLimit(MAX_STATUS_BODY_BYTES);
const defaultLimit = sizeLimit(MAX_BODY_BYTES);
const readsBody = new Set(["POST", "PUT", "PATCH"]);

/**
 * Route middleware: 403 unless the caller has one of `roles` and, with `"region"`, may act
 * in the path's region, or with `"unscoped"`, in every region (what spans them all); then
 * 413 for a body over the limit (a status batch's is larger). It runs before the route's
 * validators, so a caller who may not use a route learns nothing of what it accepts.
 */
export function allow(
  roles: readonly Role[],
  scope: "region" | "any region" | "unscoped" = "any region",
  body: "request" | "status batch" = "request",
): MiddlewareHandler<AppEnv> {
  const limit = body === "status batch" ? statusLimit : defaultLimit;
  return (c, next) => {
    const principal = c.get("principal");
    authorize(principal, roles, scope === "region" ? c.req.param("region") : undefined);
    if (scope === "unscoped" && principal.regions !== null) {
      throw new ForbiddenError("This token is scoped to some regions; this spans them all");
    }
    if (!readsBody.has(c.req.method)) return next();
    if (untypedBody(c)) throw new HTTPException(415, { message: "No Content-Type" });
    canonicalJsonType(c);
    return unreadBodyIsUnavailable(c, limit, next);
  };
}

const problem = (
  description: string,
  status: keyof typeof problemExamples,
  example: Record<string, unknown> = problemExamples[status],
) => ({
  description,
  content: { "application/problem+json": { schema: Problem, example } },
});

/** The 409 of a deletion that something still depends on (in place of the lease-lost 409). */
export const inUseProblem = {
  409: problem(
    "Something still uses it; the detail names what (`urn:allot:problem:in-use`)",
    409,
    inUseExample,
  ),
};

const problemResponses = {
  400: problem("Malformed path, query, header or JSON (`urn:allot:problem:bad-request`)", 400),
  401: {
    ...problem("Missing or unknown bearer token (`urn:allot:problem:unauthorized`)", 401),
    headers: z.object({
      "WWW-Authenticate": z.string().openapi({
        description: "The scheme to authenticate with.",
        example: 'Bearer realm="allot"',
      }),
    }),
  },
  403: problem(
    "The token's role or region scope does not allow this, or the claim secret is missing or wrong (`urn:allot:problem:forbidden`)",
    403,
  ),
  404: problem(
    "The region, resource or claim does not exist (`urn:allot:problem:not-found`)",
    404,
  ),
  409: problem(
    "The lease is no longer the caller's: expired, revoked or its resource gone, or (renew, revoke) released (`urn:allot:problem:lease-lost`)",
    409,
  ),
  413: problem(
    "The body is over the size limit, or a status batch is too large to store in one commit (`urn:allot:problem:too-large`)",
    413,
  ),
  415: problem(
    "The body is not `application/json` (`urn:allot:problem:unsupported-media-type`)",
    415,
  ),
  422: problem(
    "The body breaks a rule; `field` names the first offending field and `errors` lists them all (`urn:allot:problem:validation`)",
    422,
  ),
  503: {
    ...problem(
      "No capacity (`urn:allot:problem:no-capacity`), or too much contention or backlog, or the store unavailable (`urn:allot:problem:unavailable`); retry after `Retry-After` seconds",
      503,
    ),
    headers: RetryAfterHeaders,
  },
} as const;

type ProblemStatus = keyof typeof problemResponses;

/**
 * The problem responses a route can give, and only those: the document lists what the
 * code can answer (tests/openapi_test.ts holds each route to it).
 */
export function problems<S extends ProblemStatus>(
  ...statuses: S[]
): Pick<typeof problemResponses, S> {
  return Object.fromEntries(statuses.map((s) => [s, problemResponses[s]])) as Pick<
    typeof problemResponses,
    S
  >;
}

/** Response header of every write: pass it back as `Allot-Consistency-Token` to read the write. */
export const ConsistencyTokenHeader = z.object({
  "Allot-Consistency-Token": ConsistencyToken,
});

/** The answer of a write that returns nothing but its consistency token (a deletion). */
export function tokenOnlyResponse(description: string) {
  return {
    description,
    headers: ConsistencyTokenHeader,
    content: {
      "application/json": {
        schema: z.object({ consistencyToken: ConsistencyToken }),
        example: { consistencyToken: "000000000000002d0000" },
      },
    },
  };
}

/** Response header of reads that honour `Allot-Consistency-Token`. */
export const ConsistencyServedHeader = z.object({
  "Allot-Consistency": z.enum(["strong", "eventual"]).openapi({
    description:
      "How the read was served: `eventual` from a replica that had caught up with the presented token, else `strong`.",
  }),
});

export const bearerSecurity = [{ bearer: [] }];

export const ConsistencyHeaders = z.object({
  "allot-consistency-token": z.string().regex(/^[0-9a-f]{20}$/, {
    message: "must be a consistencyToken returned by a write",
  }).optional().openapi({
    description:
      "A write's consistencyToken (`Allot-Consistency-Token`): the read will reflect that write (read-your-writes). It may be served from a replica; one that cannot catch up within a short bound makes the read strong, never stale.",
    example: "00000000000000110000",
  }),
});

/** Path parameters of a route under /v1/regions/{region}. */
export const RegionParams = z.object({ region: RegionName });

/** A page of a listing: its items, and the cursor of the next page (null: no more). */
export const pageOf = <T extends z.ZodType>(item: T) =>
  z.object({ items: z.array(item), cursor: z.string().nullable() });

/** A listing's 200 answer: a page of `item`s, illustrated by a page holding `example`. */
export const pageResponse = <T extends z.ZodType>(item: T, example: unknown) => ({
  description: "A page; pass `cursor` back for the next one (null: no more)",
  content: {
    "application/json": { schema: pageOf(item), example: { items: [example], cursor: null } },
  },
});

const PAGE_LIMIT = "must be a whole number from 1 to 1000";

export const PageQuery = z.object({
  cursor: z.string().max(1024).optional().openapi({
    description: "The `cursor` of the previous page; omit for the first page.",
  }),
  // Decimal digits only: coercing with Number() would also read `0x10`, `1e2` or ` 1 `.
  limit: z.preprocess(
    (raw) => (typeof raw === "string" && /^\d{1,7}$/.test(raw) ? Number(raw) : raw),
    z.number({ error: PAGE_LIMIT }).int({ error: PAGE_LIMIT }).min(1, { error: PAGE_LIMIT })
      .max(1000, { error: PAGE_LIMIT }),
  ).default(100).openapi({
    description: "Most items on this page.",
  }),
});
