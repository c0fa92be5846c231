/** Test harness: a fresh :memory: KV per app, a fake clock, tokens for every role. */
import { createApp } from "../app.ts";
import { TokenRegistry } from "../lib/auth.ts";
import type { Clock } from "../lib/clock.ts";
import type { TokenSpec } from "../lib/config.ts";

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
} as const;

export const TOKEN_SPECS: TokenSpec[] = [
  { token: TOKENS.admin, role: "admin" },
  { token: TOKENS.agent, role: "agent" },
  { token: TOKENS.client, role: "client" },
  { token: TOKENS.agentFra, role: "agent", regions: ["fra"] },
  { token: TOKENS.clientFra, role: "client", regions: ["fra"] },
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
    request: (method, path, opts) => send(app.fetch, method, path, opts),
    [Symbol.asyncDispose]: () => {
      if (ownsKv) kv.close();
      return Promise.resolve();
    },
  };
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
