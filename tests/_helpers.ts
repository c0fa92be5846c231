/** Test harness: a fresh :memory: KV per app, a fake clock, tokens for every role. */
import assert from "node:assert/strict";
import { createApp } from "../app.ts";
import { TokenRegistry } from "../lib/auth.ts";
import type { Clock } from "../lib/clock.ts";
import type { TokenSpec } from "../lib/config.ts";
import type { handleQueueMessage } from "../lib/queue.ts";

/** A clock that only moves when told to. */
export class FakeClock implements Clock {
  constructor(public time = Date.UTC(2026, 0, 1)) {}
  now(): number {
    return this.time;
  }
  advance(ms: number): void {
    this.time += ms;
  }
}

/** One token per role, plus region-scoped ones. */
export const TOKENS = {
  admin: "test-admin-token-000001",
  agent: "test-agent-token-000001",
  client: "test-client-token-00001",
  agentFra: "test-agent-fra-token-01",
  clientFra: "test-client-fra-token-1",
  adminFra: "test-admin-fra-token-01",
  /** A second, unscoped client: a different caller for idempotency scoping. */
  client2: "test-client-token-00002",
} as const;

export const TOKEN_SPECS: TokenSpec[] = [
  { token: TOKENS.admin, role: "admin" },
  { token: TOKENS.agent, role: "agent" },
  { token: TOKENS.client, role: "client" },
  { token: TOKENS.agentFra, role: "agent", regions: ["fra"] },
  { token: TOKENS.clientFra, role: "client", regions: ["fra"] },
  { token: TOKENS.adminFra, role: "admin", regions: ["fra"] },
  { token: TOKENS.client2, role: "client" },
];

/** What a test request returns: status, headers and parsed JSON (null when empty). */
export interface TestResponse {
  status: number;
  headers: Headers;
  // deno-lint-ignore no-explicit-any
  body: any;
}

export interface RequestOptions {
  token?: string | null;
  body?: unknown;
  headers?: Record<string, string>;
}

/** An app instance over a KV handle, with a request helper. */
export interface TestApp {
  kv: Deno.Kv;
  clock: FakeClock;
  app: ReturnType<typeof createApp>;
  request(method: string, path: string, options?: RequestOptions): Promise<TestResponse>;
}

/** Builds an app over `kv` (a fresh :memory: KV when omitted) with a fake clock. */
export async function makeApp(
  options: { kv?: Deno.Kv; clock?: FakeClock } = {},
): Promise<TestApp & AsyncDisposable> {
  const kv = options.kv ?? await Deno.openKv(":memory:");
  const ownsKv = options.kv === undefined;
  const clock = options.clock ?? new FakeClock();
  const app = createApp({ kv, clock, tokens: await TokenRegistry.from(TOKEN_SPECS) });
  return {
    kv,
    clock,
    app,
    request: async (method, path, opts) => {
      const res = await send(app.fetch, method, path, opts);
      assertDocumented(await documentedStatuses(app), method, path, res);
      return res;
    },
    [Symbol.asyncDispose]: () => {
      if (ownsKv) kv.close();
      return Promise.resolve();
    },
  };
}

/** Method + path template → the statuses /openapi.json lists for it. */
type StatusTable = Array<
  { method: string; path: RegExp; statuses: Set<number>; headers: Map<number, string[]> }
>;
let statusTable: Promise<StatusTable> | undefined;

/** The document is the same for every app instance: read it once. */
function documentedStatuses(app: ReturnType<typeof createApp>): Promise<StatusTable> {
  return statusTable ??= Promise.resolve(app.request("/openapi.json")).then(async (res) => {
    const doc = await res.json();
    type Responses = Record<string, { headers?: Record<string, { required?: boolean }> }>;
    return Object.entries(doc.paths as Record<string, Record<string, { responses: Responses }>>)
      .flatMap(([template, ops]) =>
        Object.entries(ops).map(([method, op]) => ({
          method: method.toUpperCase(),
          path: new RegExp(`^${template.replace(/\{[^}]+\}/g, "[^/]+")}$`),
          statuses: new Set(Object.keys(op.responses).map(Number)),
          headers: new Map(
            Object.entries(op.responses).map((
              [status, response],
            ) => [
              Number(status),
              Object.entries(response.headers ?? {}).filter(([, h]) => h.required !== false)
                .map(([name]) => name),
            ]),
          ),
        }))
      );
  });
}

/**
 * Holds every answer a test gets through `makeApp` to the OpenAPI document: a route's status
 * must be one it documents, with the headers documented for it, and a /v1 problem must be
 * problem+json. So the whole suite, with
 * every error it provokes, checks that the document is what the code does.
 */
function assertDocumented(table: StatusTable, method: string, url: string, res: TestResponse) {
  const path = new URL(url, "http://allot.test").pathname;
  const route = table.find((r) => r.method === method && r.path.test(path));
  if (route === undefined) return; // no such operation: the 404 (or 401) of no route
  assert.ok(
    route.statuses.has(res.status),
    `${method} ${path} answered ${res.status}, which its OpenAPI operation does not list ` +
      `(${[...route.statuses].join(", ")}): ${JSON.stringify(res.body)}`,
  );
  for (const name of route.headers.get(res.status) ?? []) {
    assert.ok(res.headers.has(name), `${method} ${path} ${res.status} lacks its ${name} header`);
  }
  if (res.status >= 400 && path.startsWith("/v1/")) {
    assert.equal(res.headers.get("content-type"), "application/problem+json", `${method} ${path}`);
  }
}

/** Sends a request through a fetch-like handler (an app, or a real server via `fetch`). */
export async function send(
  handler: (request: Request) => Response | Promise<Response>,
  method: string,
  path: string,
  { token = TOKENS.admin, body, headers = {} }: RequestOptions = {},
  base = "http://allot.test",
): Promise<TestResponse> {
  const init: RequestInit = { method, headers: { ...headers } };
  const h = init.headers as Record<string, string>;
  if (token !== null) h.authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    h["content-type"] ??= "application/json";
  }
  const res = await handler(new Request(new URL(path, base), init));
  const text = await res.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  return { status: res.status, headers: res.headers, body: parsed };
}

/** Creates a region and `count` resources named `${prefix}-NNNN` with `slots` slots each. */
export async function seedRegion(
  t: TestApp,
  region: string,
  count: number,
  { slots = 1, labels = {}, prefix = "res", config = {} }: {
    slots?: number;
    labels?: Record<string, string>;
    prefix?: string;
    config?: Record<string, unknown>;
  } = {},
): Promise<void> {
  const created = await t.request("PUT", `/v1/regions/${region}`, { body: config });
  if (created.status >= 300) throw new Error(`seed region: ${JSON.stringify(created.body)}`);
  for (let i = 0; i < count; i++) {
    const id = `${prefix}-${String(i).padStart(4, "0")}`;
    const res = await t.request("PUT", `/v1/regions/${region}/resources/${id}`, {
      body: { slots, labels },
    });
    if (res.status >= 300) throw new Error(`seed resource: ${JSON.stringify(res.body)}`);
  }
}

/** Claims in `region` as the client; returns the raw response. */
export function claim(
  t: TestApp,
  region: string,
  body: Record<string, unknown> = { holder: "h" },
  headers: Record<string, string> = {},
): Promise<TestResponse> {
  return t.request("POST", `/v1/regions/${region}/claims`, { token: TOKENS.client, body, headers });
}

/** Renews a claim as the client with its secret. */
export function renew(
  t: TestApp,
  id: string,
  secret: string | null,
  body: Record<string, unknown> = {},
): Promise<TestResponse> {
  return t.request("POST", `/v1/claims/${id}/renew`, {
    token: TOKENS.client,
    body,
    headers: secret === null ? {} : { "allot-claim-secret": secret },
  });
}

/** Releases a claim as the client with its secret. */
export function release(t: TestApp, id: string, secret: string | null): Promise<TestResponse> {
  return t.request("DELETE", `/v1/claims/${id}`, {
    token: TOKENS.client,
    headers: secret === null ? {} : { "allot-claim-secret": secret },
  });
}

/** Reads a claim as the client; asserts it exists and returns its body. */
export async function getClaim(t: TestApp, id: string): Promise<TestResponse["body"]> {
  const res = await t.request("GET", `/v1/claims/${id}`, { token: TOKENS.client });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

/** A region's pool figures as GET /v1/regions/{region} reports them. */
export async function poolOf(
  t: TestApp,
  region: string,
): Promise<{ free: number; claimed: number; total: number }> {
  const res = await t.request("GET", `/v1/regions/${region}`, { token: TOKENS.admin });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const { free, claimed, total } = res.body;
  return { free, claimed, total };
}

/** Asserts a problem+json answer with this status, naming `field` when given. */
export function assertProblem(res: TestResponse, status: number, field?: string): void {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.match(res.headers.get("content-type") ?? "", /^application\/problem\+json/);
  assert.equal(res.body.status, status);
  assert.equal(typeof res.body.title, "string");
  assert.equal(typeof res.body.detail, "string");
  if (field !== undefined) {
    const named = [
      res.body.field,
      ...(res.body.errors ?? []).map((e: { field: string }) => e.field),
    ];
    assert.ok(
      named.includes(field),
      `expected the problem to name ${field}: ${JSON.stringify(res.body)}`,
    );
    assert.ok(res.body.detail.includes(field), `expected the detail to name ${field}`);
  }
}

/**
 * Every entry of a KV store (key, value, versionstamp) in a form `assert.deepEqual`
 * compares exactly: any write, even of an equal value, changes the snapshot.
 */
export async function snapshotKv(kv: Deno.Kv): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of kv.list({ prefix: [] })) {
    out.push(JSON.stringify([
      entry.key.map((part) => (typeof part === "bigint" ? `${part}n` : part)),
      entry.value instanceof Deno.KvU64 ? `u64:${entry.value.value}` : entry.value,
      entry.versionstamp,
    ], (_k, v) => (typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? [...v] : v)));
  }
  return out;
}

/** Every page of a listing (`{items, cursor}`), following cursors. */
export async function listPages<T = Record<string, unknown>>(
  t: TestApp,
  path: string,
  token: string = TOKENS.admin,
): Promise<{ items: T[]; pages: number }> {
  const items: T[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const url: string = cursor === null
      ? path
      : `${path}${sep}cursor=${encodeURIComponent(cursor)}`;
    const res = await t.request("GET", url, { token });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    items.push(...res.body.items);
    cursor = res.body.cursor;
    pages++;
    assert.ok(pages < 10_000, "pagination does not end");
  } while (cursor !== null);
  return { items, pages };
}

/**
 * Dependencies for delivering `lease.sweep` and `lease.expire` messages to handleQueueMessage by hand.
 * Those branches need only the KV and the clock, so nothing else is provided.
 */
export function leaseQueueDeps(t: TestApp): Parameters<typeof handleQueueMessage>[0] {
  const deps: unknown = { kv: t.kv, clock: t.clock };
  return deps as Parameters<typeof handleQueueMessage>[0];
}

type CommitResult = Deno.KvCommitResult | Deno.KvCommitError;

/** A message an atomic enqueued, and after how many milliseconds it is due. */
interface Enqueued {
  message: unknown;
  delay: number;
}

/**
 * A KV handle whose atomic commits go through `around`, which gets the real commit and
 * the messages the operation enqueues, with their delays. Every other call passes
 * through, and chained calls stay on the wrapper.
 */
function wrapCommits(
  inner: Deno.Kv,
  around: (commit: () => Promise<CommitResult>, enqueued: Enqueued[]) => Promise<CommitResult>,
): Deno.Kv {
  const wrapOp = (op: Deno.AtomicOperation): Deno.AtomicOperation => {
    const enqueued: Enqueued[] = [];
    const proxy: Deno.AtomicOperation = new Proxy(op, {
      get(target, prop) {
        if (prop === "commit") return () => around(() => target.commit(), enqueued);
        const value = Reflect.get(target, prop, target);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          if (prop === "enqueue") {
            const options = args[1] as { delay?: number } | undefined;
            enqueued.push({ message: args[0], delay: options?.delay ?? 0 });
          }
          const result = value.apply(target, args);
          return result === target ? proxy : result;
        };
      },
    });
    return proxy;
  };
  return new Proxy(inner, {
    get(target, prop) {
      if (prop === "atomic") return () => wrapOp(target.atomic());
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** The read methods a test stands in for with kvWith. */
type KvReads = Pick<Deno.Kv, "get" | "getMany" | "list">;

/**
 * `inner` with some of its read methods replaced (to watch them, fail them, or land another
 * write first; a replacement calls `inner` itself), every other member `inner`'s own.
 */
export function kvWith(
  inner: Deno.Kv,
  replaced: { [K in keyof KvReads]?: (...args: Parameters<KvReads[K]>) => unknown },
): Deno.Kv {
  return new Proxy(inner, {
    get(target, prop) {
      if (Object.hasOwn(replaced, prop)) return replaced[prop as keyof KvReads];
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/**
 * Wraps a KV handle so a test can land other writes between an operation's reads and
 * its commit, deterministically: `arm(hook)` makes the next atomic commit through the
 * wrapper first await `hook` (once). Build the app under test over `kv`, and the app
 * that races it over the unwrapped handle.
 */
export function interceptCommits(inner: Deno.Kv): {
  kv: Deno.Kv;
  arm(hook: () => Promise<unknown>): void;
  /** Whether the armed hook has run. */
  fired(): boolean;
} {
  let hook: (() => Promise<unknown>) | null = null;
  let fired = false;
  const kv = wrapCommits(inner, async (commit) => {
    const run = hook;
    hook = null;
    if (run) {
      await run();
      fired = true;
    }
    return await commit();
  });
  return {
    kv,
    arm(next) {
      hook = next;
      fired = false;
    },
    fired: () => fired,
  };
}

/**
 * A subject app whose next commit can be preceded by a racer app's write (`hook.arm`, or
 * `armed`), over one KV as two isolates would share it; disposing closes that KV.
 */
export async function racingApps() {
  const inner = await Deno.openKv(":memory:");
  const hook = interceptCommits(inner);
  const subject = await makeApp({ kv: hook.kv });
  const racer = await makeApp({ kv: inner, clock: subject.clock });
  return {
    hook,
    subject,
    racer,
    /**
     * Arms `write` before the subject's next commit; resolves with the store as the write
     * left it, once it ran (a refused operation must leave it so).
     */
    armed(write: () => Promise<unknown>): Promise<string[]> {
      const { promise, resolve } = Promise.withResolvers<string[]>();
      hook.arm(async () => {
        await write();
        resolve(await snapshotKv(inner));
      });
      return promise;
    },
    [Symbol.asyncDispose]: () => Promise.resolve(inner.close()),
  };
}

type LostAnswer = "answered" | "landed" | "not landed" | "landed, retried";

/**
 * Wraps a KV handle so that, once armed, its next atomic commits lose their answer as a KV
 * Connect call can, one per armed value (`"answered"` passes one through): they throw,
 * `"landed"` after the write went through or `"not landed"` instead of it; or, `"landed,
 * retried"`, they answer as Deno's client sending the landed write again would, its checks
 * failing against the write itself. `afterLanding` runs once a lost write has landed (on
 * the unwrapped handle); `failReads(n)` makes the next `n` gets throw.
 */
export function loseCommitAnswers(inner: Deno.Kv): {
  kv: Deno.Kv;
  arm(...next: LostAnswer[]): void;
  afterLanding(hook: (versionstamp: string) => Promise<void>): void;
  failReads(count: number): void;
} {
  const armed: LostAnswer[] = [];
  let hook: ((versionstamp: string) => Promise<void>) | null = null;
  let failingReads = 0;
  const commits = wrapCommits(inner, async (commit) => {
    const how = armed.shift();
    if (how === undefined || how === "answered") return await commit();
    if (how !== "not landed") {
      const res = await commit();
      if (res.ok) await hook?.(res.versionstamp);
    }
    if (how === "landed, retried") return { ok: false };
    throw new TypeError("error sending request for url (http://kv.test/): connection reset");
  });
  const kv = new Proxy(commits, {
    get(target, prop) {
      if (prop === "get" && failingReads > 0) {
        failingReads--;
        return () => Promise.reject(new TypeError("error sending request: connection reset"));
      }
      return Reflect.get(target, prop, target);
    },
  });
  return {
    kv,
    arm: (...next) => armed.push(...next),
    afterLanding: (next) => hook = next,
    failReads: (count) => failingReads = count,
  };
}

/**
 * Wraps a KV handle so the messages enqueued by the atomics that commit through it are
 * recorded in `enqueued` (their delays in `delays`, in the same order), for a test to
 * play the queue by hand.
 */
export function recordEnqueues(
  inner: Deno.Kv,
): { kv: Deno.Kv; enqueued: unknown[]; delays: number[] } {
  const enqueued: unknown[] = [];
  const delays: number[] = [];
  const kv = wrapCommits(inner, async (commit, staged) => {
    const res = await commit();
    if (res.ok) {
      enqueued.push(...staged.map((e) => e.message));
      delays.push(...staged.map((e) => e.delay));
    }
    return res;
  });
  return { kv, enqueued, delays };
}

/** Claims in `region` until it answers 503; returns the grants (a destructive capacity probe). */
export async function claimAll(
  t: TestApp,
  region: string,
  body: Record<string, unknown> = { holder: "probe" },
): Promise<TestResponse["body"][]> {
  const grants: TestResponse["body"][] = [];
  for (let i = 0; i < 1000; i++) {
    const res = await claim(t, region, body);
    if (res.status !== 201) {
      assert.equal(res.status, 503, JSON.stringify(res.body));
      return grants;
    }
    grants.push(res.body);
  }
  throw new Error("claimAll: region never ran out");
}
