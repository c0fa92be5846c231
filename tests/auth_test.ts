import assert from "node:assert/strict";
import { digestsEqual, sha256Hex } from "../lib/auth.ts";
import { keys } from "../lib/keys.ts";
import { listRegions } from "../lib/regions.ts";
import { ingestStatus } from "../lib/status.ts";
import {
  assertProblem,
  claim,
  kvWith,
  listPages,
  makeApp,
  seedRegion,
  snapshotKv,
  type TestApp,
  type TestResponse,
  TOKENS,
} from "./_helpers.ts";

/**
 * Who may call what, from the SPEC's HTTP contract (not from the code). Admins may do
 * everything a role may (an operator acting for a client or an agent). Region-scoped
 * tokens (here: scoped to fra) may act in their regions only; every request below is
 * about region iad, so they are refused even where their role is allowed.
 */
type Role = "admin" | "agent" | "client";
const ANY: Role[] = ["admin", "agent", "client"];

interface RouteCase {
  route: string;
  /** null: public, no token needed. */
  allowed: Role[] | null;
  /** Builds a fresh request (creating whatever it acts on) and the status it gets when allowed. */
  setup(t: TestApp, n: number): Promise<Req>;
}

interface Req {
  method: string;
  path: string;
  body?: unknown;
  headers?: Record<string, string>;
  ok: number;
}

async function newClaim(t: TestApp): Promise<{ id: string; secret: string }> {
  const res = await claim(t, "iad", { holder: "owner" });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body;
}

/** A status message the queue gave up on (what Deno KV writes to its keysIfUndelivered). */
async function newDeadLetter(t: TestApp, n: number): Promise<string> {
  const [message] = (await ingestStatus(t.kv, t.clock, "iad", [
    { resource: `dead-${n}`, seq: 1, state: "ready" },
  ])).messages;
  await t.kv.set(keys.deadLetter("iad", message.id), message);
  return message.id;
}

async function newResource(t: TestApp, id: string): Promise<void> {
  const res = await t.request("PUT", `/v1/regions/iad/resources/${id}`, { body: {} });
  assert.equal(res.status, 201, JSON.stringify(res.body));
}

const TABLE: RouteCase[] = [
  {
    route: "GET /healthz",
    allowed: null,
    setup: () => Promise.resolve({ method: "GET", path: "/healthz", ok: 200 }),
  },
  {
    route: "GET /readyz",
    allowed: null,
    setup: () => Promise.resolve({ method: "GET", path: "/readyz", ok: 200 }),
  },
  {
    route: "GET /openapi.json",
    allowed: null,
    setup: () => Promise.resolve({ method: "GET", path: "/openapi.json", ok: 200 }),
  },
  {
    route: "GET /docs",
    allowed: null,
    setup: () => Promise.resolve({ method: "GET", path: "/docs", ok: 200 }),
  },
  {
    route: "GET / (dashboard)",
    allowed: null,
    setup: () => Promise.resolve({ method: "GET", path: "/", ok: 200 }),
  },
  {
    route: "GET /dashboard.js",
    allowed: null,
    setup: () => Promise.resolve({ method: "GET", path: "/dashboard.js", ok: 200 }),
  },
  {
    route: "PUT /v1/regions/{region}",
    allowed: ["admin"],
    setup: () => Promise.resolve({ method: "PUT", path: "/v1/regions/iad", body: {}, ok: 200 }),
  },
  {
    route: "GET /v1/regions",
    // Scoped tokens may list; they see only their regions (checked separately).
    allowed: ANY,
    setup: () => Promise.resolve({ method: "GET", path: "/v1/regions", ok: 200 }),
  },
  {
    route: "GET /v1/regions/{region}",
    allowed: ANY,
    setup: () => Promise.resolve({ method: "GET", path: "/v1/regions/iad", ok: 200 }),
  },
  {
    route: "DELETE /v1/regions/{region}",
    allowed: ["admin"],
    setup: async (t, n) => {
      assert.equal((await t.request("PUT", `/v1/regions/old-${n}`, { body: {} })).status, 201);
      return { method: "DELETE", path: `/v1/regions/old-${n}`, ok: 200 };
    },
  },
  {
    route: "PUT /v1/regions/{region}/resources/{id}",
    allowed: ["admin", "agent"],
    setup: (_t, n) =>
      Promise.resolve({
        method: "PUT",
        path: `/v1/regions/iad/resources/put-${n}`,
        body: {},
        ok: 201,
      }),
  },
  {
    route: "DELETE /v1/regions/{region}/resources/{id}",
    allowed: ["admin", "agent"],
    setup: async (t, n) => {
      await newResource(t, `del-${n}`);
      return { method: "DELETE", path: `/v1/regions/iad/resources/del-${n}`, ok: 200 };
    },
  },
  {
    route: "GET /v1/regions/{region}/resources",
    allowed: ANY,
    setup: () => Promise.resolve({ method: "GET", path: "/v1/regions/iad/resources", ok: 200 }),
  },
  {
    route: "GET /v1/regions/{region}/resources/{id}",
    allowed: ANY,
    setup: () =>
      Promise.resolve({ method: "GET", path: "/v1/regions/iad/resources/res-0000", ok: 200 }),
  },
  {
    route: "POST /v1/regions/{region}/status",
    allowed: ["admin", "agent"],
    setup: (_t, n) =>
      Promise.resolve({
        method: "POST",
        path: "/v1/regions/iad/status",
        body: { updates: [{ resource: "res-0001", seq: n + 1, state: "ready", load: 0.5 }] },
        ok: 202,
      }),
  },
  {
    route: "POST /v1/regions/{region}/claims",
    allowed: ["admin", "client"],
    setup: () =>
      Promise.resolve({
        method: "POST",
        path: "/v1/regions/iad/claims",
        body: { holder: "h" },
        ok: 201,
      }),
  },
  {
    route: "GET /v1/stats",
    allowed: ["admin"],
    setup: () => Promise.resolve({ method: "GET", path: "/v1/stats", ok: 200 }),
  },
  {
    route: "GET /v1/regions/{region}/dead-letters",
    allowed: ["admin"],
    setup: () => Promise.resolve({ method: "GET", path: "/v1/regions/iad/dead-letters", ok: 200 }),
  },
  {
    route: "GET /v1/regions/{region}/dead-letters/{id}",
    allowed: ["admin"],
    setup: async (t, n) => ({
      method: "GET",
      path: `/v1/regions/iad/dead-letters/${await newDeadLetter(t, n)}`,
      ok: 200,
    }),
  },
  {
    route: "DELETE /v1/regions/{region}/dead-letters/{id}",
    allowed: ["admin"],
    setup: async (t, n) => ({
      method: "DELETE",
      path: `/v1/regions/iad/dead-letters/${await newDeadLetter(t, n)}`,
      ok: 204,
    }),
  },
  {
    route: "GET /v1/claims/{id}",
    allowed: ["admin", "client"],
    setup: async (t) => ({ method: "GET", path: `/v1/claims/${(await newClaim(t)).id}`, ok: 200 }),
  },
  {
    route: "POST /v1/claims/{id}/renew",
    allowed: ["admin", "client"],
    setup: async (t) => {
      const { id, secret } = await newClaim(t);
      return {
        method: "POST",
        path: `/v1/claims/${id}/renew`,
        body: {},
        headers: { "allot-claim-secret": secret },
        ok: 200,
      };
    },
  },
  {
    route: "DELETE /v1/claims/{id}",
    allowed: ["admin", "client"],
    setup: async (t) => {
      const { id, secret } = await newClaim(t);
      return {
        method: "DELETE",
        path: `/v1/claims/${id}`,
        headers: { "allot-claim-secret": secret },
        ok: 204,
      };
    },
  },
  {
    route: "GET /v1/regions/{region}/claims",
    allowed: ["admin", "client"],
    setup: () => Promise.resolve({ method: "GET", path: "/v1/regions/iad/claims", ok: 200 }),
  },
  {
    route: "POST /v1/claims/{id}/revoke",
    allowed: ["admin"],
    setup: async (t) => ({
      method: "POST",
      path: `/v1/claims/${(await newClaim(t)).id}/revoke`,
      body: { reason: "audit" },
      ok: 200,
    }),
  },
];

/** The callers: a token (or header) and what it is. */
const CALLERS: {
  name: string;
  authorization: string | null;
  role: Role | null;
  scoped: boolean;
}[] = [
  { name: "admin", authorization: `Bearer ${TOKENS.admin}`, role: "admin", scoped: false },
  { name: "agent", authorization: `Bearer ${TOKENS.agent}`, role: "agent", scoped: false },
  { name: "client", authorization: `Bearer ${TOKENS.client}`, role: "client", scoped: false },
  { name: "agentFra", authorization: `Bearer ${TOKENS.agentFra}`, role: "agent", scoped: true },
  { name: "clientFra", authorization: `Bearer ${TOKENS.clientFra}`, role: "client", scoped: true },
  { name: "no token", authorization: null, role: null, scoped: false },
  {
    name: "unknown token",
    authorization: "Bearer not-a-known-token-at-all",
    role: null,
    scoped: false,
  },
  {
    name: "basic auth",
    authorization: `Basic ${btoa(`x:${TOKENS.admin}`)}`,
    role: null,
    scoped: false,
  },
];

function expectedStatus(route: RouteCase, caller: (typeof CALLERS)[number], ok: number): number {
  if (route.allowed === null) return ok;
  if (caller.role === null) return 401;
  if (!route.allowed.includes(caller.role)) return 403;
  if (caller.scoped && route.route !== "GET /v1/regions") return 403;
  return ok;
}

async function send(t: TestApp, req: Req, authorization: string | null): Promise<TestResponse> {
  const headers = { ...req.headers };
  if (authorization !== null) headers.authorization = authorization;
  return await t.request(req.method, req.path, { token: null, body: req.body, headers });
}

Deno.test("every route answers every role as the authorization table says", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 60);
  await seedRegion(app, "fra", 1);
  let n = 0;
  for (const route of TABLE) {
    await t.step(route.route, async () => {
      for (const caller of CALLERS) {
        const req = await route.setup(app, n++);
        const expected = expectedStatus(route, caller, req.ok);
        const before = await snapshotKv(app.kv);
        const res = await send(app, req, caller.authorization);
        const what = `${route.route} as ${caller.name}`;
        assert.equal(res.status, expected, `${what}: ${JSON.stringify(res.body)}`);
        if (expected === 401 || expected === 403) {
          assertProblem(res, expected);
          if (expected === 401) {
            assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/, what);
          }
          assert.deepEqual(await snapshotKv(app.kv), before, `${what} changed state`);
        }
      }
    });
  }
});

Deno.test("a caller the route refuses gets 403 before its input is even validated", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 60);
  await seedRegion(app, "fra", 1);
  let n = 0;
  for (const route of TABLE) {
    if (route.allowed === null) continue;
    const allowed = route.allowed;
    await t.step(route.route, async () => {
      for (const caller of CALLERS) {
        if (caller.role === null) continue;
        const req = await route.setup(app, n++);
        // A claim's region scope is known only once the claim is read: a scoped token is
        // refused there after validation. A region in the path settles it before.
        const outOfScope = caller.scoped && req.path.startsWith("/v1/regions/iad");
        if (allowed.includes(caller.role) && !outOfScope) continue;
        const bad = {
          ...req,
          path: `${req.path}${req.path.includes("?") ? "&" : "?"}limit=0x10`,
          body: req.method === "POST" || req.method === "PUT" ? { "not a field": 1 } : undefined,
          headers: { ...req.headers, "idempotency-key": "", "allot-consistency-token": "bad" },
        };
        const res = await send(app, bad, caller.authorization);
        assertProblem(res, 403);
      }
    });
  }
});

Deno.test("region-scoped tokens see and act in their own regions only", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 2);
  await seedRegion(app, "fra", 2);
  const as = (token: string, method: string, path: string, body?: unknown, headers = {}) =>
    app.request(method, path, { token, body, headers });

  await t.step("listing regions shows only the token's regions", async () => {
    for (const token of [TOKENS.agentFra, TOKENS.clientFra]) {
      const res = await as(token, "GET", "/v1/regions");
      assert.deepEqual(res.body.items.map((r: { name: string }) => r.name), ["fra"]);
    }
    const all = await as(TOKENS.client, "GET", "/v1/regions");
    assert.deepEqual(all.body.items.map((r: { name: string }) => r.name).sort(), ["fra", "iad"]);
    assert.equal(all.body.cursor, null);
  });

  await t.step(
    "the region listing pages in name order; a scoped token's pages skip others",
    async () => {
      for (const name of ["ams", "gru", "sin"]) {
        await as(
          TOKENS.admin,
          "PUT",
          `/v1/regions/${name}`,
          {},
        );
      }
      const names = (items: Array<{ name: string }>) => items.map((r) => r.name);
      const paged = await listPages<{ name: string }>(app, "/v1/regions?limit=2", TOKENS.client);
      assert.deepEqual(names(paged.items), ["ams", "fra", "gru", "iad", "sin"]);
      assert.equal(paged.pages, 3);
      const scoped = await listPages<{ name: string }>(
        app,
        "/v1/regions?limit=1",
        TOKENS.clientFra,
      );
      assert.deepEqual(names(scoped.items), ["fra"]);
      const foreign = await as(TOKENS.client, "GET", "/v1/regions/iad/resources?limit=1");
      const reused = await as(
        TOKENS.client,
        "GET",
        `/v1/regions?cursor=${encodeURIComponent(foreign.body.cursor)}`,
      );
      assertProblem(reused, 400);
      assert.equal(reused.body.field, "cursor");
    },
  );

  await t.step("a scoped token's region cursors name only regions it may see", async () => {
    for (const name of ["secret-x", "zzz"]) {
      await as(TOKENS.admin, "PUT", `/v1/regions/${name}`, {});
    }
    const visible = new Set(["ams", "fra", "not-created", "sin"]);
    const names: string[] = [];
    const cursors: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await listRegions(app.kv, app.clock, { cursor, limit: 1 }, visible);
      names.push(...page.items.map((r) => r.name));
      cursor = page.cursor ?? undefined;
      if (cursor) cursors.push(cursor);
    } while (cursor);
    assert.deepEqual(names, ["ams", "fra", "sin"]);
    const decode = (part: string) => {
      try {
        const bytes = Uint8Array.from(
          atob(part.replace(/-/g, "+").replace(/_/g, "/")),
          (ch) => ch.charCodeAt(0),
        );
        return new TextDecoder().decode(bytes);
      } catch {
        return part;
      }
    };
    for (const c of cursors) {
      const seen = `${c} ${c.split(".").map(decode).join(" ")}`;
      assert.doesNotMatch(seen, /secret|zzz|gru|iad/, `cursor ${c} names another region`);
    }
    const fra = await as(TOKENS.clientFra, "GET", "/v1/regions?limit=1");
    assert.deepEqual(fra.body.items.map((r: { name: string }) => r.name), ["fra"]);
    assert.equal(fra.body.cursor, null);
    const foreign = await as(TOKENS.client, "GET", "/v1/regions?limit=1");
    const reused = await as(
      TOKENS.clientFra,
      "GET",
      `/v1/regions?cursor=${encodeURIComponent(foreign.body.cursor)}`,
    );
    assertProblem(reused, 400);
  });

  await t.step("a fra agent manages fra resources", async () => {
    assert.equal((await as(TOKENS.agentFra, "GET", "/v1/regions/fra")).status, 200);
    assert.equal((await as(TOKENS.agentFra, "PUT", "/v1/regions/fra/resources/x", {})).status, 201);
    assert.equal((await as(TOKENS.agentFra, "DELETE", "/v1/regions/fra/resources/x")).status, 200);
    assertProblem(await as(TOKENS.agentFra, "PUT", "/v1/regions/fra", {}), 403);
  });

  await t.step(
    "a fra admin configures fra, but cannot make another region its backup",
    async () => {
      assert.equal((await as(TOKENS.adminFra, "PUT", "/v1/regions/fra", {})).status, 200);
      assertProblem(await as(TOKENS.adminFra, "GET", "/v1/regions/iad"), 403);
      // Its claims in fallback would take iad's slots, a pool it may not see or configure;
      // and a 403 whether or not the region exists tells it nothing about other regions.
      for (const backup of ["iad", "nowhere"]) {
        assertProblem(await as(TOKENS.adminFra, "PUT", "/v1/regions/fra", { backup }), 403);
      }
      const fra = await as(TOKENS.admin, "GET", "/v1/regions/fra");
      assert.equal(fra.body.backup, null, "the refused PUT changed nothing");
      assert.equal(
        (await as(TOKENS.admin, "PUT", "/v1/regions/fra", { backup: "iad" })).status,
        200,
        "an unscoped admin may",
      );
    },
  );

  await t.step(
    "a fra admin cannot read the isolate's counters, which span every region",
    async () => {
      assertProblem(await as(TOKENS.adminFra, "GET", "/v1/stats"), 403);
      assert.equal((await as(TOKENS.admin, "GET", "/v1/stats")).status, 200);
    },
  );

  await t.step("a fra client claims in fra and manages its claim", async () => {
    const granted = await as(TOKENS.clientFra, "POST", "/v1/regions/fra/claims", { holder: "h" });
    assert.equal(granted.status, 201);
    const { id, secret } = granted.body;
    const auth = { "allot-claim-secret": secret };
    assert.equal((await as(TOKENS.clientFra, "GET", `/v1/claims/${id}`)).status, 200);
    assert.equal(
      (await as(TOKENS.clientFra, "POST", `/v1/claims/${id}/renew`, {}, auth)).status,
      200,
    );
    assert.equal((await as(TOKENS.clientFra, "GET", "/v1/regions/fra/claims")).status, 200);
    // The fra token may not touch an iad claim, even holding its secret.
    const iadClaim = (await claim(app, "iad", { holder: "i" })).body;
    const iadAuth = { "allot-claim-secret": iadClaim.secret };
    assertProblem(await as(TOKENS.clientFra, "GET", `/v1/claims/${iadClaim.id}`), 403);
    assertProblem(
      await as(TOKENS.clientFra, "DELETE", `/v1/claims/${iadClaim.id}`, undefined, iadAuth),
      403,
    );
    assert.equal(
      (await as(TOKENS.clientFra, "DELETE", `/v1/claims/${id}`, undefined, auth)).status,
      204,
    );
  });
});

Deno.test("a scoped token's read of a claim served outside its regions never waits on that region", async () => {
  // How long a read-your-writes read waited for a region's replica would tell a token scoped
  // away from it whether the region exists, and when it was written.
  const inner = await Deno.openKv(":memory:");
  const marksRead: string[] = [];
  const kv = kvWith(inner, {
    get: (key, options) => {
      if (key[2] === "wm") marksRead.push(String(key[1]));
      return inner.get(key, options);
    },
  });
  await using app = await makeApp({ kv });
  await seedRegion(app, "fra", 1);
  await seedRegion(app, "secret-gpu", 1);
  const { body: held } = await claim(app, "fra", { holder: "h" });
  const read = (id: string) =>
    app.request("GET", `/v1/claims/${id}`, {
      token: TOKENS.clientFra,
      headers: { "allot-consistency-token": "00000000000000000000" },
    });
  for (const region of ["secret-gpu", "no-such-region"]) {
    assertProblem(await read(`${region}.01JD3J3ZK6S6M2P1TQ4Z3X9V7A`), 404);
  }
  assert.deepEqual(marksRead, [], "no write mark of a region outside the token's read");
  const own = await read(held.id);
  assert.equal(own.status, 200, "its own region's claims still honour the token");
  assert.deepEqual(marksRead, ["fra"]);
  inner.close();
});

Deno.test("digestsEqual() is true only for the same digest", async (t) => {
  const digest = sha256Hex("a claim secret");
  await t.step(
    "equal digests",
    () => assert.equal(digestsEqual(digest, sha256Hex("a claim secret")), true),
  );
  await t.step("a difference at either end, or anywhere", () => {
    const flip = (i: number) =>
      digest.slice(0, i) + (digest[i] === "0" ? "1" : "0") + digest.slice(i + 1);
    for (const i of [0, 31, 63]) assert.equal(digestsEqual(digest, flip(i)), false, `at ${i}`);
  });
  await t.step("a prefix, or nothing", () => {
    assert.equal(digestsEqual(digest, digest.slice(0, 63)), false);
    assert.equal(digestsEqual(digest, ""), false);
    assert.equal(digestsEqual("", ""), true);
  });
});
