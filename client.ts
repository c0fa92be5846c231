/**
 * A typed client for allot's HTTP API. It is Hono RPC (`hc`) over the server's own
 * route definitions, so paths, parameters, bodies and answers are checked against
 * the zod schemas that validate them; only types are imported from the server.
 *
 * ```ts
 * import { AllotClient, withRetry } from "./client.ts";
 *
 * const allot = new AllotClient("http://localhost:8000", { token: Deno.env.get("ALLOT_TOKEN")! });
 * const idempotencyKey = crypto.randomUUID(); // the same for every attempt
 * const claim = await withRetry(
 *   () => allot.claim("iad", { holder: "worker-7" }, { idempotencyKey }),
 *   { retryNetworkErrors: true }, // safe with the key: a retry answers the same claim
 * );
 * await allot.renew(claim, 120_000);
 * await allot.release(claim);
 * ```
 *
 * Failures throw an {@link AllotProblem} carrying the RFC 9457 problem document:
 * {@link LeaseLostError} for 409 and {@link UnavailableError} (with `retryAfter`)
 * for 503, which {@link withRetry} retries after the server's `Retry-After`; a request
 * or answer lost on the way throws a {@link NetworkError}, which `withRetry` retries
 * when asked to (`retryNetworkErrors`).
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import { type ClientResponse, hc } from "hono/client";
import type { z } from "zod";
import type { Problem } from "./lib/errors.ts";
import type {
  Claim,
  ClaimGrant,
  ClaimInput,
  ClaimState,
  RegionInput,
  RegionView,
  Resource,
  ResourceInput,
  StatusUpdate,
} from "./lib/schemas.ts";
import type { AppEnv } from "./routes/_shared.ts";
import type { claimRoutes } from "./routes/claims.ts";
import type { healthRoutes } from "./routes/health.ts";
import type { regionRoutes } from "./routes/regions.ts";
import type { resourceRoutes } from "./routes/resources.ts";
import type { statusRoutes } from "./routes/status.ts";

export type { Claim, ClaimGrant, ClaimState, RegionView, Resource, StatusUpdate };

type SchemaOf<T> = T extends OpenAPIHono<AppEnv, infer S, "/"> ? S : never;
/** The API as createApp mounts it (health and v1): the route factories' schemas, merged. */
export type AllotApi = OpenAPIHono<
  AppEnv,
  & SchemaOf<ReturnType<typeof healthRoutes>>
  & SchemaOf<ReturnType<typeof regionRoutes>>
  & SchemaOf<ReturnType<typeof resourceRoutes>>
  & SchemaOf<ReturnType<typeof claimRoutes>>
  & SchemaOf<ReturnType<typeof statusRoutes>>
>;

/** A replayed claim's state now, as `Allot-Claim-State` says it (null: a server too old to say). */
export type ReplayState = ClaimState | "ended" | null;

const REPLAY_STATES: ReadonlySet<string> = new Set<Exclude<ReplayState, null>>([
  "active",
  "released",
  "expired",
  "lost",
  "ended",
]);

/**
 * A claim's answer. A replay (the same `idempotencyKey` again) carries `replay`: the claim's
 * state now, since the grant itself is the first answer, `active`, whatever became of it.
 */
export type Granted = ClaimGrant & { replay?: { state: ReplayState } };

/** What renew and release need from a grant. */
export type ClaimHandle = Pick<ClaimGrant, "id" | "secret">;
/** The answer to a write: what was written, and its consistency token. */
export type Written<T> = T & { consistencyToken: string };
/** One page of a listing; pass `cursor` back for the next (null: no more). */
export interface Page<T> {
  items: T[];
  cursor: string | null;
}

/** A failed request: its HTTP status and its RFC 9457 problem document. */
export class AllotProblem extends Error {
  constructor(
    readonly status: number,
    readonly problem: Problem,
    /** Seconds the server asked to wait (`Retry-After`), when it did. */
    readonly retryAfter: number | null,
  ) {
    super(`${status} ${problem.title}: ${problem.detail}`);
    this.name = new.target.name;
  }
}

/** 409: the lease is no longer the caller's (expired, revoked, resource gone; renew: released). */
export class LeaseLostError extends AllotProblem {}

/** 409 of a deletion: something still uses what was to be deleted, as the detail says. */
export class InUseError extends AllotProblem {}

/** 503: no free slot, or overloaded; retry after `retryAfter` seconds. */
export class UnavailableError extends AllotProblem {
  declare readonly retryAfter: number;
}

/**
 * The request or its answer was lost on the way (a connection refused, reset or cut off):
 * the server may or may not have acted on it. A TypeError, as fetch's own failures are.
 */
export class NetworkError extends TypeError {
  constructor(cause: unknown) {
    super(`The request or its answer was lost: ${cause}`, { cause });
    this.name = "NetworkError";
  }
}

/** Whatever `read` resolves to; a failure of the connection under it is a NetworkError. */
async function unlessLost<T>(read: Promise<T>): Promise<T> {
  try {
    return await read;
  } catch (error) {
    throw error instanceof TypeError && !(error instanceof NetworkError)
      ? new NetworkError(error)
      : error;
  }
}

/** Whether a parsed body can stand for a problem document (a proxy's own JSON cannot). */
function isProblemLike(body: unknown): body is Partial<Problem> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return false;
  const { type, title, detail } = body as Record<string, unknown>;
  return typeof type === "string" || typeof title === "string" || typeof detail === "string";
}

/** Seconds from a `Retry-After` header (delta-seconds or HTTP date), or null. */
function retryAfterSeconds(header: string | null): number | null {
  if (header === null) return null;
  if (/^\d+$/.test(header.trim())) return Number(header);
  const at = Date.parse(header);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

/** The typed error for a failed answer. */
async function problemFrom(
  res: Pick<Response, "status" | "statusText" | "headers" | "text">,
): Promise<AllotProblem> {
  const text = await unlessLost(res.text());
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: the text is the detail
  }
  const fallback = { type: "about:blank", title: res.statusText, status: res.status };
  const problem: Problem = isProblemLike(parsed)
    ? { ...fallback, ...parsed } as Problem
    : { ...fallback, detail: text };
  const retryAfter = retryAfterSeconds(res.headers.get("retry-after"));
  if (res.status === 409) {
    return problem.type === "urn:allot:problem:in-use"
      ? new InUseError(res.status, problem, retryAfter)
      : new LeaseLostError(res.status, problem, retryAfter);
  }
  if (res.status === 503) return new UnavailableError(res.status, problem, retryAfter ?? 1);
  return new AllotProblem(res.status, problem, retryAfter);
}

type BodyOf<R, S extends number> = R extends ClientResponse<infer T, S, "json"> ? T : never;

/** The body of an answer with the expected status; any other status throws its problem. */
async function expect<R extends ClientResponse<unknown, number, string>, S extends number>(
  res: R,
  status: S,
): Promise<BodyOf<R, S>> {
  if (res.status !== status) throw await problemFrom(res);
  return await unlessLost(res.json()) as BodyOf<R, S>;
}

/**
 * A region, resource or claim id as one path segment. Hono RPC does not escape parameters
 * and fetch resolves `..`, so `release({ id: "../regions/iad/resources/r1" })` would send
 * a DELETE to that resource: anything that is not a plain id is refused before sending.
 */
function segment(what: string, value: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._:~-]*$/.test(value)) {
    throw new TypeError(`Invalid ${what} ${JSON.stringify(value)}: not an allot id`);
  }
  return encodeURIComponent(value);
}

const resourceParams = (region: string, id: string) => ({
  region: segment("region", region),
  id: segment("resource id", id),
});

/** Options of a client. */
export interface ClientOptions {
  /** A bearer token from the server's ALLOT_TOKENS. */
  token: string;
  /** A fetch to send requests with (default: the global one). */
  fetch?: typeof fetch;
}

/** One allot server, as one caller (its token). Every method throws AllotProblem on failure. */
export class AllotClient {
  readonly #root;
  readonly #api;

  constructor(baseUrl: string | URL, { token, fetch }: ClientOptions) {
    // Checked here, so that fetch's refusal of a URL is never taken for a lost request.
    const { protocol } = new URL(baseUrl);
    if (protocol !== "http:" && protocol !== "https:") {
      throw new TypeError(`Invalid allot URL ${String(baseUrl)}: not http or https`);
    }
    const send = fetch ?? globalThis.fetch;
    this.#root = hc<AllotApi>(String(baseUrl), {
      headers: { authorization: `Bearer ${token}` },
      fetch: (input: RequestInfo | URL, init?: RequestInit) => unlessLost(send(input, init)),
    });
    this.#api = this.#root.v1;
  }

  /** Liveness: resolves once the server answers `/healthz`. */
  async health(): Promise<{ status: "ok" }> {
    return await expect(await this.#root.healthz.$get(), 200);
  }

  /** Readiness: whether the server's KV store answers (`/readyz`; 503 is "unavailable"). */
  async ready(): Promise<{ status: "ok" | "unavailable" }> {
    const res = await this.#root.readyz.$get();
    return res.status === 503 ? await res.json() : await expect(res, 200);
  }

  /**
   * Claims one free slot in `region` (client). Pass an `idempotencyKey` to make
   * retries safe: the same key returns the same claim, never a second one.
   */
  async claim(
    region: string,
    input: ClaimInput,
    { idempotencyKey }: { idempotencyKey?: string } = {},
  ): Promise<Granted> {
    const res = await this.#api.regions[":region"].claims.$post({
      param: { region: segment("region", region) },
      json: input,
      header: { "idempotency-key": idempotencyKey },
    });
    const grant = await expect(res, 201);
    if (res.headers.get("idempotent-replayed") !== "true") return grant;
    const header = res.headers.get("allot-claim-state");
    const state = header !== null && REPLAY_STATES.has(header) ? header as ReplayState : null;
    return { ...grant, replay: { state } };
  }

  /** Extends a live lease by `leaseMs` from now (default: its current length). */
  async renew(claim: ClaimHandle, leaseMs?: number): Promise<Written<Claim>> {
    const res = await this.#api.claims[":id"].renew.$post({
      param: { id: segment("claim id", claim.id) },
      header: { "allot-claim-secret": claim.secret },
      json: leaseMs === undefined ? {} : { leaseMs },
    });
    return await expect(res, 200);
  }

  /** Releases a live lease; resolves to the release's consistency token. */
  async release(claim: ClaimHandle): Promise<{ consistencyToken: string }> {
    const res = await this.#api.claims[":id"].$delete({
      param: { id: segment("claim id", claim.id) },
      header: { "allot-claim-secret": claim.secret },
    });
    if (res.status !== 204) throw await problemFrom(res);
    return { consistencyToken: res.headers.get("allot-consistency-token") ?? "" };
  }

  /** Reads a claim; a `consistencyToken` from a write makes the read reflect it. */
  async getClaim(id: string, { consistencyToken }: { consistencyToken?: string } = {}) {
    const res = await this.#api.claims[":id"].$get({
      param: { id: segment("claim id", id) },
      header: { "allot-consistency-token": consistencyToken },
    });
    return await expect(res, 200);
  }

  /**
   * One page of the claims a region's pool serves (admin, client), filtered by holder
   * and state; never a secret. A `consistencyToken` makes it reflect that write.
   */
  async listClaims(
    region: string,
    { consistencyToken, limit, ...query }: {
      holder?: string;
      state?: ClaimState;
      cursor?: string;
      limit?: number;
      consistencyToken?: string;
    } = {},
  ): Promise<Page<Claim>> {
    const res = await this.#api.regions[":region"].claims.$get({
      param: { region: segment("region", region) },
      query: { ...query, limit: limit?.toString() },
      header: { "allot-consistency-token": consistencyToken },
    });
    return await expect(res, 200);
  }

  /** One page of the regions this token may see, in name order, with their health. */
  async regions(
    { cursor, limit }: { cursor?: string; limit?: number } = {},
  ): Promise<Page<RegionView>> {
    const res = await this.#api.regions.$get({ query: { cursor, limit: limit?.toString() } });
    return await expect(res, 200);
  }

  /** One region's configuration and health. */
  async region(region: string): Promise<RegionView> {
    const res = await this.#api.regions[":region"].$get({
      param: { region: segment("region", region) },
    });
    return await expect(res, 200);
  }

  /** Creates or replaces a region's configuration (admin); omitted fields take defaults. */
  async putRegion(
    region: string,
    input: z.input<typeof RegionInput> = {},
  ): Promise<Written<RegionView>> {
    const res = await this.#api.regions[":region"].$put({
      param: { region: segment("region", region) },
      json: input,
    });
    return res.status === 200 ? await expect(res, 200) : await expect(res, 201);
  }

  /** Deletes a region nothing uses any more (admin); 409 names what still uses it. */
  async deleteRegion(region: string): Promise<{ consistencyToken: string }> {
    const res = await this.#api.regions[":region"].$delete({
      param: { region: segment("region", region) },
    });
    return await expect(res, 200);
  }

  /** Registers or replaces a resource (admin, agent). */
  async putResource(
    region: string,
    id: string,
    input: z.input<typeof ResourceInput> = {},
  ): Promise<Written<Resource>> {
    const res = await this.#api.regions[":region"].resources[":id"].$put({
      param: resourceParams(region, id),
      json: input,
    });
    return res.status === 200 ? await expect(res, 200) : await expect(res, 201);
  }

  /** Removes a resource (admin, agent); its live leases become lost. */
  async deleteResource(region: string, id: string): Promise<{ consistencyToken: string }> {
    const res = await this.#api.regions[":region"].resources[":id"].$delete({
      param: resourceParams(region, id),
    });
    return await expect(res, 200);
  }

  /** Reads a resource; a `consistencyToken` from a write makes the read reflect it. */
  async getResource(
    region: string,
    id: string,
    { consistencyToken }: { consistencyToken?: string } = {},
  ): Promise<Resource> {
    const res = await this.#api.regions[":region"].resources[":id"].$get({
      param: resourceParams(region, id),
      header: { "allot-consistency-token": consistencyToken },
    });
    return await expect(res, 200);
  }

  /** One page of a region's resources, in id order. */
  async listResources(
    region: string,
    { consistencyToken, limit, cursor }: {
      cursor?: string;
      limit?: number;
      consistencyToken?: string;
    } = {},
  ): Promise<Page<Resource>> {
    const res = await this.#api.regions[":region"].resources.$get({
      param: { region: segment("region", region) },
      query: { cursor, limit: limit?.toString() },
      header: { "allot-consistency-token": consistencyToken },
    });
    return await expect(res, 200);
  }

  /** Reports a batch of status updates (agent); resolves once they are durable in the queue. */
  async reportStatus(region: string, updates: StatusUpdate[]) {
    const res = await this.#api.regions[":region"].status.$post({
      param: { region: segment("region", region) },
      json: { updates },
    });
    return await expect(res, 202);
  }

  /** Ends a live lease now (admin); its holder gets LeaseLostError afterwards. */
  async revoke(id: string, reason: string): Promise<Written<Claim>> {
    const res = await this.#api.claims[":id"].revoke.$post({
      param: { id: segment("claim id", id) },
      json: { reason },
    });
    return await expect(res, 200);
  }
}

/** Options of {@link withRetry}. */
export interface RetryOptions {
  /** Attempts in all, the first included (default 5). */
  attempts?: number;
  /** Longest single wait in ms, whatever Retry-After says (default 30 s). */
  maxDelayMs?: number;
  /** How to wait (default: a timer); tests pass one that does not. */
  sleep?: (ms: number) => Promise<void>;
  /** Called before each wait, e.g. to log it (a NetworkError only with `retryNetworkErrors`). */
  onRetry?(error: UnavailableError | NetworkError, attempt: number, delayMs: number): void;
  /**
   * Also retry a NetworkError (the answer was lost; the server may have acted), after 0.25,
   * 0.5, 1, 2… s: only for what is safe to repeat, such as a claim with an idempotency key
   * (the retry answers the same claim), a renew, a status report or a PUT. Default false.
   */
  retryNetworkErrors?: boolean;
}

/** Options of {@link withRetry} that retry 503s only: `onRetry` then only sees those. */
export interface RetryOn503Options extends Omit<RetryOptions, "onRetry" | "retryNetworkErrors"> {
  onRetry?(error: UnavailableError, attempt: number, delayMs: number): void;
  retryNetworkErrors?: false;
}

/**
 * Runs `fn`, retrying it after each UnavailableError (503) for as long as the
 * server's `Retry-After` asks (and, with `retryNetworkErrors`, after a lost answer), up
 * to `attempts` in all; other errors, and the last one, are thrown. Give claims an
 * idempotency key so a retry can never claim twice.
 */
export function withRetry<T>(fn: () => Promise<T>, options?: RetryOn503Options): Promise<T>;
export function withRetry<T>(fn: () => Promise<T>, options: RetryOptions): Promise<T>;
export async function withRetry<T>(
  fn: () => Promise<T>,
  {
    attempts = 5,
    maxDelayMs = 30_000,
    sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
    onRetry,
    retryNetworkErrors,
  }: RetryOptions = {},
): Promise<T> {
  for (let attempt = 1;; attempt++) {
    try {
      return await fn();
    } catch (error) {
      const lost = retryNetworkErrors && error instanceof NetworkError;
      if (!(error instanceof UnavailableError || lost) || attempt >= attempts) throw error;
      const delayMs = Math.min(
        maxDelayMs,
        error instanceof UnavailableError ? error.retryAfter * 1000 : 250 * 2 ** (attempt - 1),
      );
      onRetry?.(error, attempt, delayMs);
      await sleep(delayMs);
    }
  }
}
