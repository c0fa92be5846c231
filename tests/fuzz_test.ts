/**
 * Hostile input, property-based (fast-check): random and malformed JSON, wrong types,
 * huge and deeply nested bodies, odd unicode in ids, labels and paths, missing and
 * duplicate headers, wrong content types, bad Idempotency-Key, Allot-Claim-Secret and
 * consistency tokens, against every endpoint through app.fetch. Properties: never a
 * 500 (a 503 only as the contract's "no capacity", with Retry-After), never a hang,
 * every 4xx (and 503) is problem+json, and state is unchanged after any of them.
 *
 * ALLOT_FUZZ_SEED=<n> replays or varies the cases; ALLOT_FUZZ_RUNS=<n> scales them.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { MAX_BODY_BYTES, MAX_STATUS_BODY_BYTES } from "../routes/_shared.ts";
import { claim, makeApp, seedRegion, snapshotKv, type TestApp, TOKENS } from "./_helpers.ts";

const SEED = Number(Deno.env.get("ALLOT_FUZZ_SEED") ?? 0xf022);
const RUNS = Number(Deno.env.get("ALLOT_FUZZ_RUNS") ?? 500);
/** A request that takes longer than this has hung (generous: CI machines are shared). */
const REQUEST_TIMEOUT_MS = 10_000;

const RESOURCES = Array.from({ length: 10 }, (_, i) => `res-${String(i).padStart(4, "0")}`);
const CLAIMS = 24;

/** Strings that have broken parsers, routers and key encoders before. */
const ODD_STRINGS = [
  "",
  " ",
  "\u0000",
  "\u202eiad",
  "i\u200bad",
  "\ud800",
  "\udfff\ud800",
  "𝔦𝔞𝔡",
  "🙂".repeat(200),
  "a".repeat(3000),
  "ÏAD",
  "iad\n",
  "iad/..",
  "../../etc/passwd",
  "%00",
  "%2F",
  "%E0%A4%A",
  "%",
  "a?b=c#d",
  "__proto__",
  "constructor",
  "toString",
  "hasOwnProperty",
  "null",
  "-1",
  "1e309",
  "${x}",
  "<script>",
  "' OR 1=1 --",
  "\\",
  "a b",
  "Bearer",
];

const oddString = fc.oneof(
  fc.constantFrom(...ODD_STRINGS),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 40 }),
);

/** Characters a header value can carry (Latin-1, as raw bytes arrive), without CR, LF or NUL. */
const headerString = (maxLength: number) =>
  fc.string({
    unit: fc.integer({ min: 1, max: 255 })
      .filter((c) => c !== 10 && c !== 13)
      .map((c) => String.fromCharCode(c)),
    maxLength,
  });

/** Any JSON value of the wrong shape for the field it lands in. */
const junk: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(null, true, false, 0, -1, 1.5, -0, 1e308, -1e308, 2 ** 53 + 2, 5e-324),
  fc.integer(),
  fc.double(),
  oddString,
  fc.jsonValue({ maxDepth: 2 }),
);

/** Mostly a well-formed value, sometimes junk: most bodies are near misses of valid ones. */
const maybe = <T>(valid: fc.Arbitrary<T>): fc.Arbitrary<unknown> =>
  fc.oneof({ weight: 12, arbitrary: valid }, { weight: 1, arbitrary: junk });

const ms = maybe(fc.integer({ min: 1, max: 4_000_000_000 }));
const labels = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.dictionary(
      fc.constantFrom("browser", "gpu", "zone", "tier"),
      fc.string({ maxLength: 20 }),
      { maxKeys: 4 },
    ),
  },
  { weight: 1, arbitrary: fc.dictionary(oddString, oddString, { maxKeys: 20 }) },
  { weight: 1, arbitrary: junk },
);
const state = maybe(fc.constantFrom("ready", "draining", "gone"));
const resourceId = maybe(
  fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...RESOURCES) }, {
    weight: 1,
    arbitrary: oddString,
  }),
);

const BODIES = {
  region: fc.record({
    backup: maybe(fc.constantFrom(null, "fra", "iad", "nowhere")),
    lag: maybe(fc.record({ enterMs: ms, exitMs: ms }, { requiredKeys: [] })),
    lease: maybe(fc.record({ defaultMs: ms, maxMs: ms }, { requiredKeys: [] })),
  }, { requiredKeys: [] }),
  resource: fc.record({
    slots: maybe(fc.integer({ min: 1, max: 64 })),
    labels,
    state,
  }, { requiredKeys: [] }),
  status: fc.record({
    updates: maybe(fc.array(
      fc.record({
        resource: resourceId,
        seq: maybe(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER })),
        state,
        slots: maybe(fc.integer({ min: 1, max: 64 })),
        labels,
        load: maybe(fc.double({ min: 0, max: 1e12, noNaN: true })),
      }, { requiredKeys: ["resource", "seq", "state"] }),
      { maxLength: 3 },
    )),
  }, { requiredKeys: ["updates"] }),
  claim: fc.record({ holder: maybe(oddString), leaseMs: ms, labels }, { requiredKeys: ["holder"] }),
  renew: fc.record({ leaseMs: ms }, { requiredKeys: [] }),
  revoke: fc.record({ reason: maybe(oddString) }, { requiredKeys: ["reason"] }),
};
type BodyKind = keyof typeof BODIES;

/** Strings that are not the JSON they claim to be, or are JSON of a surprising kind. */
const MALFORMED = [
  "{",
  "}",
  "[",
  '{"holder":',
  '{"holder":"x",}',
  "{'holder':'x'}",
  "null",
  "true",
  "0",
  '""',
  "[]",
  '{"holder":"x"}{"holder":"y"}',
  '\ufeff{"holder":"x"}',
  '{"holder":"x","holder":1}',
  '{"__proto__":{"role":"admin"},"holder":"x"}',
  '{"constructor":{"prototype":{"x":1}},"holder":"x"}',
  '{"holder":"x","leaseMs":1e999999}',
  "NaN",
  "-",
  '{"holder":"\\ud800"}',
  '{"holder":"\\u0000"}',
  '{"updates":[{"resource":"res-0000","seq":1,"state":"ready","labels":{"__proto__":"x"}}]}',
];

const malformed = fc.oneof(
  fc.constantFrom(...MALFORMED),
  fc.string({ unit: "binary", maxLength: 60 }),
  fc.tuple(fc.json({ maxDepth: 3 }), fc.nat()).map(([json, cut]) =>
    json.slice(0, json.length > 1 ? cut % json.length : 0)
  ),
  fc.integer({ min: 1, max: 5000 }).map((n) => "[".repeat(n) + "]".repeat(n)),
  fc.integer({ min: 1, max: 5000 }).map((n) => '{"a":'.repeat(n) + "1" + "}".repeat(n)),
);

/** Bodies too large for any route, or just inside the status route's bound. */
const HUGE = [
  JSON.stringify({ holder: "x".repeat(MAX_BODY_BYTES) }),
  "[".repeat(MAX_STATUS_BODY_BYTES) + "]".repeat(MAX_STATUS_BODY_BYTES),
  "[".repeat(MAX_STATUS_BODY_BYTES / 4) + "]".repeat(MAX_STATUS_BODY_BYTES / 4),
  JSON.stringify({
    updates: Array.from({ length: 1001 }, (_, i) => ({
      resource: RESOURCES[i % RESOURCES.length],
      seq: i + 1,
      state: "ready",
    })),
  }),
  "a".repeat(5 * 1024 * 1024),
];

type Body =
  | { kind: "none" }
  | { kind: "json"; value: unknown }
  | { kind: "raw"; text: string }
  | { kind: "huge"; index: number };

const hugeBody = fc.nat(HUGE.length - 1).map((index): Body => ({ kind: "huge", index }));
const rawBody = malformed.map((text): Body => ({ kind: "raw", text }));
const jsonBody = (kind: BodyKind | null) =>
  (kind === null ? fc.jsonValue({ maxDepth: 3 }) : fc.oneof(
    { weight: 4, arbitrary: BODIES[kind] },
    { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  )).map((value): Body => ({ kind: "json", value }));

interface Endpoint {
  method: string;
  path: string;
  /** The role whose token the route is for (null: public). */
  role: "admin" | "agent" | "client" | null;
  body?: BodyKind;
  /** Whether the route takes Allot-Claim-Secret. */
  secret?: boolean;
  query?: boolean;
}

/** Every route of the HTTP contract, plus the public ones (health, OpenAPI, docs, dashboard). */
const ENDPOINTS: Endpoint[] = [
  { method: "GET", path: "/healthz", role: null },
  { method: "GET", path: "/readyz", role: null },
  { method: "GET", path: "/openapi.json", role: null },
  { method: "GET", path: "/docs", role: null },
  { method: "GET", path: "/", role: null },
  { method: "GET", path: "/dashboard.js", role: null },
  { method: "PUT", path: "/v1/regions/{region}", role: "admin", body: "region" },
  { method: "GET", path: "/v1/regions", role: "client" },
  { method: "GET", path: "/v1/regions/{region}", role: "client" },
  { method: "DELETE", path: "/v1/regions/{region}", role: "admin" },
  { method: "PUT", path: "/v1/regions/{region}/resources/{id}", role: "agent", body: "resource" },
  { method: "DELETE", path: "/v1/regions/{region}/resources/{id}", role: "agent" },
  { method: "GET", path: "/v1/regions/{region}/resources", role: "client", query: true },
  { method: "GET", path: "/v1/regions/{region}/resources/{id}", role: "client" },
  { method: "POST", path: "/v1/regions/{region}/status", role: "agent", body: "status" },
  { method: "POST", path: "/v1/regions/{region}/claims", role: "client", body: "claim" },
  { method: "GET", path: "/v1/claims/{claim}", role: "client" },
  { method: "POST", path: "/v1/claims/{claim}/renew", role: "client", body: "renew", secret: true },
  { method: "DELETE", path: "/v1/claims/{claim}", role: "client", secret: true },
  { method: "POST", path: "/v1/claims/{claim}/revoke", role: "admin", body: "revoke" },
  { method: "GET", path: "/v1/regions/{region}/claims", role: "admin", query: true },
];

/** One request, as data (so fast-check can print and shrink it); resolved against the app. */
interface Shot {
  endpoint: number;
  method: string | null;
  /** null: a value that exists (region iad, a seeded resource, a live claim). */
  region: string | null;
  resource: string | null;
  /** A claim by index into the live ones, or a raw id. */
  claim: number | string;
  /** Percent-encode path parameters (else they go in raw). */
  encode: boolean;
  query: ReadonlyArray<readonly [string, string]>;
  auth: ReadonlyArray<string | null>;
  /** Allot-Claim-Secret values: "right" and "other" are resolved from the live claims. */
  secrets: readonly string[];
  contentType: string | null | undefined;
  extraHeaders: ReadonlyArray<readonly [string, string]>;
  body: Body;
}

/** Authorization header values: the route's own token mostly, else other roles, bad schemes, garbage. */
const authorization = (role: Endpoint["role"]) =>
  fc.oneof(
    { weight: 6, arbitrary: fc.constant(role === null ? null : `Bearer ${TOKENS[role]}`) },
    {
      weight: 2,
      arbitrary: fc.constantFrom(...Object.values(TOKENS).map((token) => `Bearer ${token}`)),
    },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        null,
        "Bearer",
        "Bearer ",
        `bearer ${TOKENS.admin}`,
        `Bearer  ${TOKENS.admin}  `,
        `Basic ${btoa(`x:${TOKENS.admin}`)}`,
        `Bearer ${TOKENS.admin}x`,
        `Bearer ${"t".repeat(10_000)}`,
      ),
    },
    { weight: 1, arbitrary: headerString(80).map((s) => `Bearer ${s}`) },
  );

const CONTENT_TYPES = [
  null,
  "text/plain",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=x",
  "application/json; charset=utf-16",
  "APPLICATION/JSON",
  "application/problem+json",
  "application/json, text/plain",
  "application/jsonx",
];

/** Values for the headers the API reads, hostile or not. */
const EXTRA_HEADERS = fc.array(
  fc.tuple(
    fc.constantFrom("idempotency-key", "allot-consistency-token", "allot-claim-secret", "x-junk"),
    fc.oneof(
      fc.constantFrom("key-1", "", " ", "k".repeat(257), "00000000000000000000"),
      fc.constantFrom("ffffffffffffffffffff", "0000000000000000000G", "FFFFFFFFFFFFFFFFFFFF"),
      headerString(300),
    ),
  ),
  { maxLength: 3 },
);

const queryParams = fc.array(
  fc.tuple(
    fc.constantFrom("limit", "cursor", "holder", "state", "x"),
    fc.oneof(
      fc.constantFrom("1", "0", "1000", "1001", "-5", "1.5", "1e3", "active", "lost", "", "AAAA"),
      oddString,
    ),
  ),
  { maxLength: 4 },
);

/** A shot at one endpoint; `weights` tilt it towards hostile bodies or headers. */
function shot(weights: { body: number; headers: number }): fc.Arbitrary<Shot> {
  return fc.nat(ENDPOINTS.length - 1).chain((index) => {
    const endpoint = ENDPOINTS[index];
    const body = fc.oneof(
      { weight: 6, arbitrary: jsonBody(endpoint.body ?? null) },
      { weight: 2 * weights.body, arbitrary: rawBody },
      { weight: weights.body, arbitrary: hugeBody },
      { weight: 1, arbitrary: fc.constant<Body>({ kind: "none" }) },
    );
    return fc.record({
      endpoint: fc.constant(index),
      method: fc.oneof(
        { weight: 12, arbitrary: fc.constant(null) },
        { weight: 1, arbitrary: fc.constantFrom("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD") },
      ),
      region: fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, {
        weight: 1,
        arbitrary: fc.oneof(fc.constantFrom("fra", "nowhere", "IAD"), oddString),
      }),
      resource: fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, {
        weight: 1,
        arbitrary: oddString,
      }),
      claim: fc.oneof(
        { weight: 4, arbitrary: fc.nat(CLAIMS - 1) },
        {
          weight: 1,
          arbitrary: fc.oneof(fc.constant("iad.01ARZ3NDEKTSV4RRFFQ69G5FAV"), oddString),
        },
      ),
      encode: fc.boolean(),
      query: endpoint.query ? queryParams : fc.constant([]),
      auth: fc.oneof(
        { weight: 8, arbitrary: authorization(endpoint.role).map((a) => [a]) },
        {
          weight: weights.headers,
          arbitrary: fc.array(authorization(endpoint.role), { maxLength: 3 }),
        },
      ),
      secrets: endpoint.secret
        ? fc.oneof(
          { weight: 6, arbitrary: fc.constant(["right"]) },
          {
            weight: weights.headers,
            arbitrary: fc.array(fc.oneof(fc.constantFrom("right", "other"), headerString(300)), {
              maxLength: 3,
            }),
          },
        )
        : fc.constant([]),
      contentType: fc.oneof(
        { weight: 8, arbitrary: fc.constant(undefined) },
        { weight: weights.headers, arbitrary: fc.constantFrom(...CONTENT_TYPES) },
        { weight: 1, arbitrary: headerString(40) },
      ),
      extraHeaders: fc.oneof(
        { weight: 2, arbitrary: fc.constant([]) },
        { weight: weights.headers, arbitrary: EXTRA_HEADERS },
      ),
      body,
    });
  });
}

/** What the fuzzed app needs: the app and the claims that were live when it started. */
interface Target {
  t: TestApp;
  claims: Array<{ id: string; secret: string }>;
}

function pathParam(value: string, encode: boolean): string {
  if (!encode) return value;
  try {
    return encodeURIComponent(value);
  } catch {
    return value; // a lone surrogate cannot be encoded: send it raw
  }
}

/** Turns a shot into a Request. */
function toRequest(target: Target, s: Shot): Request {
  const endpoint = ENDPOINTS[s.endpoint];
  const method = s.method ?? endpoint.method;
  const live = typeof s.claim === "number" ? target.claims[s.claim] : null;
  let path = endpoint.path
    .replace("{region}", pathParam(s.region ?? "iad", s.encode))
    .replace("{id}", pathParam(s.resource ?? RESOURCES[0], s.encode))
    .replace("{claim}", pathParam(live?.id ?? String(s.claim), s.encode));
  if (s.query.length > 0) {
    path += "?" + s.query.map(([k, v]) => `${k}=${pathParam(v, true)}`).join("&");
  }
  const headers = new Headers();
  for (const value of s.auth) if (value !== null) headers.append("authorization", value);
  for (const secret of s.secrets) {
    const other = target.claims[(target.claims.indexOf(live!) + 1) % target.claims.length];
    const value = secret === "right"
      ? live?.secret ?? "no-such-secret"
      : secret === "other"
      ? other.secret
      : secret;
    headers.append("allot-claim-secret", value);
  }
  for (const [name, value] of s.extraHeaders) headers.append(name, value);
  const text = s.body.kind === "json"
    ? JSON.stringify(s.body.value)
    : s.body.kind === "raw"
    ? s.body.text
    : s.body.kind === "huge"
    ? HUGE[s.body.index]
    : undefined;
  const canHaveBody = method !== "GET" && method !== "HEAD";
  if (text !== undefined && canHaveBody) {
    if (s.contentType === undefined) headers.set("content-type", "application/json");
    else if (s.contentType !== null) headers.set("content-type", s.contentType);
  }
  return new Request(new URL(path, "http://allot.test"), {
    method,
    headers,
    body: canHaveBody ? text : undefined,
  });
}

/** Rejects if `promise` has not settled within `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} hung for ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A fresh app: regions iad (10 resources × 16 slots, backup fra) and fra, and live claims. */
async function newTarget(): Promise<Target & AsyncDisposable> {
  const t = await makeApp();
  await seedRegion(t, "fra", 2, { slots: 2 });
  await seedRegion(t, "iad", RESOURCES.length, { slots: 16, config: { backup: "fra" } });
  const claims = [];
  for (let i = 0; i < CLAIMS; i++) {
    const res = await claim(t, "iad", { holder: `fuzz-${i}` });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    claims.push({ id: res.body.id, secret: res.body.secret });
  }
  return { t, claims, [Symbol.asyncDispose]: () => t[Symbol.asyncDispose]() };
}

/** Checks one answer against the properties; `before` is the state the request met. */
async function checkAnswer(
  request: Request,
  res: Response,
  before: string[],
  after: string[],
): Promise<void> {
  const what = `${request.method} ${request.url}`;
  const text = await within(res.text(), REQUEST_TIMEOUT_MS, `reading ${what}`);
  const status = res.status;
  const refused = (status >= 400 && status < 500) || status === 503;
  assert.ok(status < 500 || status === 503, `${what} answered ${status}: ${text}`);
  if (!refused) return;
  assert.match(res.headers.get("content-type") ?? "", /^application\/problem\+json/, what);
  if (status === 503) assert.ok(res.headers.get("retry-after"), `${what}: 503 without Retry-After`);
  if (request.method !== "HEAD") {
    const problem = JSON.parse(text);
    assert.equal(problem.status, status, `${what}: ${text}`);
    assert.equal(typeof problem.title, "string", `${what}: ${text}`);
    assert.equal(typeof problem.detail, "string", `${what}: ${text}`);
  }
  assert.deepEqual(after, before, `${what} answered ${status} but changed state: ${text}`);
}

/** Runs `runs` shots against a fresh app; prints the number of cases and the statuses met. */
async function fuzz(name: string, arbitrary: fc.Arbitrary<Shot>, runs: number): Promise<void> {
  await using target = await newTarget();
  const statuses: Record<number, number> = {};
  let cases = 0;
  let state = await snapshotKv(target.t.kv);
  await fc.assert(
    fc.asyncProperty(arbitrary, async (s) => {
      cases++;
      const request = toRequest(target, s);
      const res = await within(
        Promise.resolve(target.t.app.fetch(request.clone())),
        REQUEST_TIMEOUT_MS,
        `${request.method} ${request.url}`,
      );
      statuses[res.status] = (statuses[res.status] ?? 0) + 1;
      // Only requests change state here (no queue listener runs), so the state after one
      // request is the state the next one meets: one snapshot per case.
      const before = state;
      state = await snapshotKv(target.t.kv);
      await checkAnswer(request, res, before, state);
    }),
    { numRuns: runs, seed: SEED },
  );
  console.log(`fuzz ${name}: ${cases} cases (seed ${SEED}), statuses ${JSON.stringify(statuses)}`);
}

Deno.test("no request to any endpoint gets a 500 or a hang, and every refusal changes nothing", async () => {
  await fuzz("endpoints", shot({ body: 1, headers: 1 }), RUNS);
});

Deno.test("malformed, huge and deeply nested bodies are refused with problem+json and change nothing", async () => {
  await fuzz("bodies", shot({ body: 6, headers: 0 }), Math.ceil(RUNS / 2));
});

Deno.test("hostile headers, tokens, secrets and content types are refused with problem+json and change nothing", async () => {
  await fuzz("headers", shot({ body: 0, headers: 6 }), Math.ceil(RUNS / 2));
});
