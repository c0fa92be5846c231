import assert from "node:assert/strict";
import {
  assertProblem,
  claim,
  makeApp,
  poolOf,
  seedRegion,
  snapshotKv,
  type TestApp,
  TOKENS,
} from "./_helpers.ts";

interface BadRequest {
  name: string;
  method: string;
  path: string | ((f: Fixture) => string);
  body?: unknown;
  headers?: Record<string, string> | ((f: Fixture) => Record<string, string>);
  token?: string;
  status: number;
  /** The field the problem must name (as the caller wrote it). */
  field?: string;
}

interface Fixture {
  id: string;
  secret: string;
}

const labels = (n: number) =>
  Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, "v"]));
const big = "x".repeat(70 * 1024);

const CASES: BadRequest[] = [
  // Malformed or oversized bodies, wrong media types.
  {
    name: "malformed JSON claim",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: "{holder:",
    token: TOKENS.client,
    status: 400,
    field: "body",
  },
  {
    name: "malformed JSON region",
    method: "PUT",
    path: "/v1/regions/iad",
    body: '{"lag": ',
    status: 400,
    field: "body",
  },
  {
    name: "malformed JSON resource",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: "[1,",
    status: 400,
    field: "body",
  },
  {
    name: "claim body over 64 KiB",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: big },
    token: TOKENS.client,
    status: 413,
    field: "body",
  },
  {
    name: "claim body over 64 KiB, its Content-Length declared",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: big },
    headers: { "content-length": String(JSON.stringify({ holder: big }).length) },
    token: TOKENS.client,
    status: 413,
    field: "body",
  },
  {
    name: "claim body over 64 KiB, its Content-Length repeated",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: big },
    headers: { "content-length": Array(2).fill(JSON.stringify({ holder: big }).length).join(", ") },
    token: TOKENS.client,
    status: 413,
    field: "body",
  },
  {
    name: "region body over 64 KiB",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { pad: big },
    status: 413,
    field: "body",
  },
  {
    name: "resource body over 64 KiB",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { labels: { k: big } },
    status: 413,
    field: "body",
  },
  {
    name: "claim as text/plain",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: JSON.stringify({ holder: "h" }),
    headers: { "content-type": "text/plain" },
    token: TOKENS.client,
    status: 415,
    field: "Content-Type",
  },
  {
    name: "resource as form data",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: "slots=2",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    status: 415,
    field: "Content-Type",
  },
  // Unknown fields.
  {
    name: "unknown claim field",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: "h", priority: 1 },
    token: TOKENS.client,
    status: 422,
    field: "priority",
  },
  {
    name: "unknown region field",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { owner: "me" },
    status: 422,
    field: "owner",
  },
  {
    name: "unknown nested region field",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { lag: { enterMs: 3000, exitMs: 100, jitter: 1 } },
    status: 422,
    field: "lag.jitter",
  },
  {
    name: "unknown resource field",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { slots: 1, color: "red" },
    status: 422,
    field: "color",
  },
  // Paths.
  {
    name: "uppercase region name",
    method: "PUT",
    path: "/v1/regions/IAD",
    body: {},
    status: 400,
    field: "region",
  },
  {
    name: "region name with underscore",
    method: "POST",
    path: "/v1/regions/a_b/claims",
    body: { holder: "h" },
    token: TOKENS.client,
    status: 400,
    field: "region",
  },
  {
    name: "region name of 33 characters",
    method: "GET",
    path: `/v1/regions/${"a".repeat(33)}/resources`,
    status: 400,
    field: "region",
  },
  {
    name: "resource id starting with '-'",
    method: "PUT",
    path: "/v1/regions/iad/resources/-bad",
    body: {},
    status: 400,
    field: "id",
  },
  {
    name: "resource id of 129 characters",
    method: "PUT",
    path: `/v1/regions/iad/resources/${"r".repeat(129)}`,
    body: {},
    status: 400,
    field: "id",
  },
  {
    name: "resource id with a space",
    method: "DELETE",
    path: "/v1/regions/iad/resources/a%20b",
    status: 400,
    field: "id",
  },
  // Region rules.
  {
    name: "lag.exitMs equal to enterMs",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { lag: { enterMs: 1000, exitMs: 1000 } },
    status: 422,
    field: "lag.exitMs",
  },
  {
    name: "lag.exitMs above enterMs",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { lag: { enterMs: 1000, exitMs: 5000 } },
    status: 422,
    field: "lag.exitMs",
  },
  {
    name: "lease.defaultMs above maxMs",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { lease: { defaultMs: 10_000, maxMs: 5000 } },
    status: 422,
    field: "lease.defaultMs",
  },
  {
    name: "non-positive lag",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { lag: { enterMs: 0, exitMs: -1 } },
    status: 422,
    field: "lag.enterMs",
  },
  {
    name: "backup naming itself",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { backup: "iad" },
    status: 422,
    field: "backup",
  },
  {
    name: "backup naming a missing region",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { backup: "nowhere" },
    status: 422,
    field: "backup",
  },
  {
    name: "backup with a bad name",
    method: "PUT",
    path: "/v1/regions/iad",
    body: { backup: "No Where" },
    status: 422,
    field: "backup",
  },
  // Resource rules.
  {
    name: "slots 0",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { slots: 0 },
    status: 422,
    field: "slots",
  },
  {
    name: "slots 65",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { slots: 65 },
    status: 422,
    field: "slots",
  },
  {
    name: "fractional slots",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { slots: 1.5 },
    status: 422,
    field: "slots",
  },
  {
    name: "slots as a string",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { slots: "2" },
    status: 422,
    field: "slots",
  },
  {
    name: "unknown state",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { state: "broken" },
    status: 422,
    field: "state",
  },
  {
    name: "17 labels",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { labels: labels(17) },
    status: 422,
    field: "labels",
  },
  {
    name: "label value of 257 characters",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { labels: { k: "v".repeat(257) } },
    status: 422,
    field: "labels.k",
  },
  {
    name: "labels of 1,028 characters together",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: {
      labels: { a: "v".repeat(256), b: "v".repeat(256), c: "v".repeat(256), d: "v".repeat(256) },
    },
    status: 422,
    field: "labels",
  },
  {
    name: "status update with labels of 1,025 characters together",
    method: "POST",
    path: "/v1/regions/iad/status",
    body: {
      updates: [{
        resource: "r",
        seq: 1,
        state: "ready",
        labels: { a: "v".repeat(256), b: "v".repeat(256), c: "v".repeat(256), d: "v".repeat(253) },
      }],
    },
    status: 422,
    field: "updates.0.labels",
  },
  {
    name: "label key of 64 characters",
    method: "PUT",
    path: "/v1/regions/iad/resources/r",
    body: { labels: { ["k".repeat(64)]: "v" } },
    status: 422,
    field: `labels.${"k".repeat(64)}`,
  },
  // Claim rules.
  {
    name: "missing holder",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: {},
    token: TOKENS.client,
    status: 422,
    field: "holder",
  },
  {
    name: "empty holder",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: "" },
    token: TOKENS.client,
    status: 422,
    field: "holder",
  },
  {
    name: "holder of 257 characters",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: "h".repeat(257) },
    token: TOKENS.client,
    status: 422,
    field: "holder",
  },
  {
    name: "leaseMs 0",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: "h", leaseMs: 0 },
    token: TOKENS.client,
    status: 422,
    field: "leaseMs",
  },
  {
    name: "fractional leaseMs",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: "h", leaseMs: 1.5 },
    token: TOKENS.client,
    status: 422,
    field: "leaseMs",
  },
  {
    name: "claim with 17 labels",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: "h", labels: labels(17) },
    token: TOKENS.client,
    status: 422,
    field: "labels",
  },
  {
    name: "claim with labels of 1,028 characters together",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: {
      holder: "h",
      labels: { a: "v".repeat(256), b: "v".repeat(256), c: "v".repeat(256), d: "v".repeat(256) },
    },
    token: TOKENS.client,
    status: 422,
    field: "labels",
  },
  {
    name: "claim as an array",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: [{ holder: "h" }],
    token: TOKENS.client,
    status: 422,
  },
  {
    name: "Idempotency-Key of 257 characters",
    method: "POST",
    path: "/v1/regions/iad/claims",
    body: { holder: "h" },
    headers: { "idempotency-key": "k".repeat(257) },
    token: TOKENS.client,
    status: 400,
    field: "Idempotency-Key",
  },
  {
    name: "renew with leaseMs -5",
    method: "POST",
    path: (f) => `/v1/claims/${f.id}/renew`,
    body: { leaseMs: -5 },
    headers: (f) => ({ "allot-claim-secret": f.secret }),
    token: TOKENS.client,
    status: 422,
    field: "leaseMs",
  },
  {
    name: "renew with an unknown field",
    method: "POST",
    path: (f) => `/v1/claims/${f.id}/renew`,
    body: { leaseMs: 1000, extend: true },
    headers: (f) => ({ "allot-claim-secret": f.secret }),
    token: TOKENS.client,
    status: 422,
    field: "extend",
  },
  {
    name: "revoke with a 513-character reason",
    method: "POST",
    path: (f) => `/v1/claims/${f.id}/revoke`,
    body: { reason: "r".repeat(513) },
    status: 422,
    field: "reason",
  },
  {
    name: "revoke without a reason",
    method: "POST",
    path: (f) => `/v1/claims/${f.id}/revoke`,
    body: {},
    status: 422,
    field: "reason",
  },
  // Queries and headers of reads.
  {
    name: "page limit 0",
    method: "GET",
    path: "/v1/regions/iad/resources?limit=0",
    status: 400,
    field: "limit",
  },
  {
    name: "page limit 1001",
    method: "GET",
    path: "/v1/regions/iad/claims?limit=1001",
    status: 400,
    field: "limit",
  },
  ...["0x10", "1e2", "%201%20", "1.0", "-1"].map((limit) => ({
    name: `page limit ${decodeURIComponent(limit)} (only decimal digits)`,
    method: "GET",
    path: `/v1/regions/iad/claims?limit=${limit}`,
    status: 400,
    field: "limit",
  })),
  {
    name: "an empty holder filter",
    method: "GET",
    path: "/v1/regions/iad/claims?holder=",
    status: 400,
    field: "holder",
  },
  {
    name: "unknown claim state filter",
    method: "GET",
    path: "/v1/regions/iad/claims?state=zombie",
    status: 400,
    field: "state",
  },
  {
    name: "malformed consistency token",
    method: "GET",
    path: "/v1/regions/iad/resources",
    headers: { "allot-consistency-token": "not-a-versionstamp" },
    status: 400,
    field: "Allot-Consistency-Token",
  },
  // Things that do not exist.
  { name: "unknown region", method: "GET", path: "/v1/regions/nowhere", status: 404 },
  {
    name: "claim in an unknown region",
    method: "POST",
    path: "/v1/regions/nowhere/claims",
    body: { holder: "h" },
    token: TOKENS.client,
    status: 404,
  },
  {
    name: "resource in an unknown region",
    method: "PUT",
    path: "/v1/regions/nowhere/resources/r",
    body: {},
    status: 404,
  },
  {
    name: "unknown claim id",
    method: "GET",
    path: "/v1/claims/iad.01JD3J3ZK6S6M2P1TQ4Z3X9V7A",
    status: 404,
  },
  { name: "malformed claim id", method: "GET", path: "/v1/claims/not-a-claim", status: 404 },
  { name: "unknown route", method: "GET", path: "/v1/nothing-here", status: 404 },
];

Deno.test("bad input gets a problem+json 4xx naming the field, and changes nothing", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 3);
  await seedRegion(app, "fra", 1);
  const held = await claim(app, "iad", { holder: "h" });
  assert.equal(held.status, 201);
  const fixture: Fixture = { id: held.body.id, secret: held.body.secret };

  for (const c of CASES) {
    await t.step(c.name, async () => {
      const before = await snapshotKv(app.kv);
      const res = await app.request(
        c.method,
        typeof c.path === "function" ? c.path(fixture) : c.path,
        {
          token: c.token ?? TOKENS.admin,
          body: c.body,
          headers: typeof c.headers === "function" ? c.headers(fixture) : c.headers,
        },
      );
      assertProblem(res, c.status, c.field);
      assert.deepEqual(await snapshotKv(app.kv), before, "a refused request changed state");
    });
  }
});

Deno.test("a refused field's message says what the field may be", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  const detailOf = async (method: string, path: string, options = {}) => {
    const res = await app.request(method, path, { token: TOKENS.admin, ...options });
    assert.ok(res.status === 400 || res.status === 422, JSON.stringify(res.body));
    return res.body.errors.map((e: { field: string; message: string }) =>
      `${e.field} ${e.message}`
    );
  };

  await t.step("a bad label key, in a claim, a resource and a status update", async () => {
    const rule = "label keys are 1-63 characters of A-Z, a-z, 0-9 and '._/-'";
    const bad = { "bad key": "v" };
    assert.deepEqual(
      await detailOf("POST", "/v1/regions/iad/claims", { body: { holder: "h", labels: bad } }),
      [`labels.bad key ${rule}`],
    );
    assert.deepEqual(
      await detailOf("PUT", "/v1/regions/iad/resources/r", { body: { labels: bad } }),
      [`labels.bad key ${rule}`],
    );
    const update = { resource: "r", seq: 1, state: "ready", labels: { "-x": "v" } };
    assert.deepEqual(
      await detailOf("POST", "/v1/regions/iad/status", { body: { updates: [update] } }),
      [`updates.0.labels.-x ${rule}`],
    );
  });

  await t.step("a page limit out of range or not a whole number", async () => {
    for (const limit of ["-1", "99999999", "1.5", "0", "1001", "ten"]) {
      assert.deepEqual(
        await detailOf("GET", `/v1/regions/iad/claims?limit=${limit}`),
        ["limit must be a whole number from 1 to 1000"],
        `limit=${limit}`,
      );
    }
  });

  await t.step("an Idempotency-Key with a space", async () => {
    const [detail] = await detailOf("POST", "/v1/regions/iad/claims", {
      body: { holder: "h" },
      headers: { "idempotency-key": "a b" },
    });
    assert.equal(detail, "Idempotency-Key must be 1-256 visible ASCII characters (no spaces)");
  });
});

Deno.test("valid boundary values are accepted", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "fra", 0);
  const put = (path: string, body: unknown) => app.request("PUT", path, { body });
  await t.step("region with every field, backup another region", async () => {
    const res = await put("/v1/regions/iad", {
      backup: "fra",
      lag: { enterMs: 2, exitMs: 1 },
      lease: { defaultMs: 5000, maxMs: 5000 },
    });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.backup, "fra");
    assert.deepEqual(res.body.lag, { enterMs: 2, exitMs: 1 });
  });
  await t.step("a region with an empty body takes the documented defaults", async () => {
    const res = await put("/v1/regions/ord", {});
    assert.equal(res.status, 201);
    assert.equal(res.body.backup, null);
    assert.deepEqual(res.body.lag, { enterMs: 2000, exitMs: 500 });
    assert.deepEqual(res.body.lease, { defaultMs: 60_000, maxMs: 3_600_000 });
  });
  await t.step(
    "slots 1 and 64, 16 labels, 256-character label values, 1,024 label characters",
    async () => {
      const one = await put("/v1/regions/iad/resources/a", { slots: 1 });
      assert.equal(one.status, 201);
      const max = await put("/v1/regions/iad/resources/b", {
        slots: 64,
        labels: { ...labels(15), long: "v".repeat(256) },
      });
      assert.equal(max.status, 201, JSON.stringify(max.body));
      assert.equal(max.body.slots, 64);
      const chars = {
        a: "v".repeat(255),
        b: "v".repeat(255),
        c: "v".repeat(255),
        d: "v".repeat(255),
      };
      const full = await put("/v1/regions/iad/resources/c", { labels: chars });
      assert.equal(full.status, 201, "1,024 characters of keys and values together");
      const id = `R${"r".repeat(127)}`;
      assert.equal((await put(`/v1/regions/iad/resources/${id}`, {})).status, 201);
    },
  );
});

/** Sanity for the harness itself: a successful write does change the snapshot. */
Deno.test("snapshotKv() sees every write, even of an equal value", async () => {
  await using t: TestApp = await makeApp();
  await seedRegion(t, "iad", 1);
  const before = await snapshotKv(t.kv);
  const res = await t.request("PUT", "/v1/regions/iad/resources/res-0000", { body: { slots: 1 } });
  assert.equal(res.status, 200);
  assert.notDeepEqual(await snapshotKv(t.kv), before);
});

Deno.test("a declared Content-Length is checked without opening the body as a stream", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  /** A request whose body cannot be opened as a stream: only its JSON can be read. */
  class NoStream extends Request {
    override get body(): ReadableStream<Uint8Array<ArrayBuffer>> | null {
      throw new Error("the body was opened as a stream");
    }
  }
  const claimWith = (headers: Record<string, string>) => {
    const body = JSON.stringify({ holder: "h" });
    return app.app.fetch(
      new NoStream("http://allot.test/v1/regions/iad/claims", {
        method: "POST",
        headers: {
          authorization: `Bearer ${TOKENS.client}`,
          "content-type": "application/json",
          "content-length": String(body.length),
          ...headers,
        },
        body,
      }),
    );
  };

  await t.step("a plain length: the claim is read and granted", async () => {
    const res = await claimWith({});
    assert.equal(res.status, 201, await res.clone().text());
    await res.body?.cancel();
  });

  await t.step("a repeated length: bodyLimit opens the stream, as it must", async () => {
    const res = await claimWith({ "content-length": "15, 15" });
    assert.equal(res.status, 500, "this request's stream throws, so bodyLimit did open it");
    await res.body?.cancel();
  });
});

Deno.test("a known path asked with another method gets 405 and Allow; an unknown path 404", async (t) => {
  await using app = await makeApp();
  const cases: Array<[string, string, string]> = [
    ["PATCH", "/v1/regions/iad", "DELETE, GET, HEAD, PUT"],
    ["POST", "/v1/regions", "GET, HEAD"],
    ["PUT", "/v1/claims/iad.01J0000000000000000000000A", "DELETE, GET, HEAD"],
    ["GET", "/v1/claims/iad.01J0000000000000000000000A/renew", "POST"],
    ["DELETE", "/healthz", "GET, HEAD"],
  ];
  for (const [method, path, allow] of cases) {
    await t.step(`${method} ${path}`, async () => {
      const res = await app.request(method, path);
      assertProblem(res, 405);
      assert.equal(res.headers.get("allow"), allow);
    });
  }
  await t.step("no such path, or a trailing slash: 404", async () => {
    assertProblem(await app.request("GET", "/v1/nothing"), 404);
    assertProblem(await app.request("GET", "/v1/regions/iad/"), 404);
    assertProblem(await app.request("GET", "/openapiXjson"), 404); // a route's `.` is literal
  });
});

Deno.test("a body that cannot be read answers 503 + Retry-After, not 400", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  /** A claim whose body sends `sent`, then breaks with `error` (Deno's, when a connection drops). */
  const claimBreakingAfter = (
    sent: string,
    headers: Record<string, string>,
    error: Error = new Deno.errors.BadResource(
      "Cannot read body as underlying resource unavailable",
    ),
  ) =>
    app.app.fetch(
      new Request("http://allot.test/v1/regions/iad/claims", {
        method: "POST",
        headers: {
          authorization: `Bearer ${TOKENS.client}`,
          "content-type": "application/json",
          ...headers,
        },
        body: new ReadableStream({
          start(controller) {
            controller.enqueue(new TextEncoder().encode(sent));
            controller.error(error);
          },
        }),
      }),
    );

  const lengths = { "a declared length": { "content-length": "15" }, "chunked": {} };
  for (const [kind, headers] of Object.entries(lengths)) {
    for (const sent of ["", '{"holder": "h"']) {
      await t.step(`${kind}, after ${sent.length} bytes`, async () => {
        const res = await claimBreakingAfter(sent, headers);
        const problem = await res.json();
        assert.equal(res.status, 503, JSON.stringify(problem));
        assert.equal(res.headers.get("retry-after"), "1");
        assert.equal(res.headers.get("content-type"), "application/problem+json");
        assert.match(problem.detail, /^Cannot read the request body/);
      });
    }
  }
  /** An untyped claim with `framing` headers whose body fails if anything reads it. */
  const untypedClaim = (framing: Record<string, string>) =>
    app.app.fetch(
      new Request("http://allot.test/v1/regions/iad/claims", {
        method: "POST",
        headers: { authorization: `Bearer ${TOKENS.client}`, ...framing },
        body: new ReadableStream({
          start(controller) {
            controller.error(new Deno.errors.BadResource("the body was read"));
          },
        }),
      }),
    );
  await t.step("a body without Content-Type is refused with 415 before it is read", async () => {
    const framings: Record<string, string>[] = [
      { "content-length": "15" },
      { "transfer-encoding": "chunked" },
    ];
    for (const framing of framings) {
      const res = await untypedClaim(framing);
      assertProblem(
        { status: res.status, headers: res.headers, body: await res.json() },
        415,
        "Content-Type",
      );
    }
  });
  await t.step("one no header announced (HTTP/2 need not) fails to be read: 503", async () => {
    const res = await untypedClaim({});
    assert.equal(res.status, 503);
    assert.match((await res.json()).detail, /^Cannot read the request body/);
  });
  await t.step("a body stream that fails for another reason is not taken for one", async () => {
    for (const headers of Object.values(lengths)) {
      const res = await claimBreakingAfter("", headers, new TypeError("not a body failure"));
      assert.notEqual(res.status, 503);
      await res.body?.cancel();
    }
  });
  await t.step("a body read whole but malformed is still 400", async () => {
    const res = await app.request("POST", "/v1/regions/iad/claims", {
      token: TOKENS.client,
      body: '{"holder": ',
    });
    assertProblem(res, 400);
  });
  assert.deepEqual(await poolOf(app, "iad"), { free: 1, claimed: 0, total: 1 });
});

Deno.test("a body with thousands of bad label keys gets a 422 listing 20 and counting the rest", async (t) => {
  await using app: TestApp = await makeApp();
  await seedRegion(app, "iad", 1);
  /** `n` keys that break the key rule (a leading '-'), each with a value that is no string. */
  const badLabels = (n: number) =>
    Object.fromEntries(Array.from({ length: n }, (_, i) => [`-${i}`, 0]));

  await t.step("a claim", async () => {
    const body = { holder: "h", labels: badLabels(4000) };
    const sent = JSON.stringify(body).length;
    assert.ok(sent < 64 * 1024, `${sent} bytes`);
    const res = await app.request("POST", "/v1/regions/iad/claims", { token: TOKENS.client, body });
    assert.equal(res.status, 422);
    assert.equal(res.body.errors.length, 20);
    assert.equal(res.body.field, res.body.errors[0].field);
    assert.match(res.body.detail, /; and [0-9,]+ more$/);
    assert.ok(JSON.stringify(res.body).length < 4096, `${JSON.stringify(res.body).length} bytes`);
  });

  await t.step("a status batch", async () => {
    const updates = Array.from(
      { length: 8 },
      (_, i) => ({ resource: `r${i}`, seq: 1, state: "ready", labels: badLabels(3000) }),
    );
    const res = await app.request("POST", "/v1/regions/iad/status", {
      token: TOKENS.agent,
      body: { updates },
    });
    assert.equal(res.status, 422);
    assert.equal(res.body.errors.length, 20);
    assert.ok(res.body.errors[0].field.startsWith("updates.0.labels"), res.body.detail);
    assert.ok(JSON.stringify(res.body).length < 4096, `${JSON.stringify(res.body).length} bytes`);
  });

  await t.step("a few issues are all listed, with no count", async () => {
    const res = await app.request("POST", "/v1/regions/iad/claims", {
      token: TOKENS.client,
      body: { holder: "h", labels: badLabels(2) },
    });
    assert.equal(res.status, 422);
    assert.ok(res.body.errors.length >= 2 && res.body.errors.length <= 5, JSON.stringify(res.body));
    assert.doesNotMatch(res.body.detail, /more$/);
  });
});
