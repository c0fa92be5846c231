import assert from "node:assert/strict";
import { assertProblem, claim, makeApp, seedRegion, type TestApp, TOKENS } from "./_helpers.ts";
import { storeAnswers } from "../lib/kv.ts";

/** A KV handle whose every read and commit fails with `error` once `failing` is set. */
function failingKv(inner: Deno.Kv, error: () => Error) {
  const state = { failing: false };
  const fail = () => Promise.reject(error());
  const kv = new Proxy(inner, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      if (!state.failing) return value.bind(target);
      switch (prop) {
        case "get":
        case "getMany":
        case "enqueue":
          return fail;
        case "list":
          return () => ({ cursor: "", [Symbol.asyncIterator]: () => ({ next: fail }) });
        case "atomic":
          return () => Object.assign(target.atomic(), { commit: fail });
        default:
          return value.bind(target);
      }
    },
  });
  return { kv, state };
}

async function expectUnavailable(app: TestApp, id: string) {
  const answers = [
    await app.request("GET", "/v1/regions/iad"),
    await app.request("GET", "/v1/regions/iad/resources"),
    await claim(app, "iad", { holder: "h" }),
    await app.request("GET", `/v1/claims/${id}`, { token: TOKENS.client }),
    await app.request("POST", "/v1/regions/iad/status", {
      token: TOKENS.agent,
      body: { updates: [{ resource: "res-0000", seq: 9, state: "ready" }] },
    }),
  ];
  for (const res of answers) {
    assertProblem(res, 503);
    assert.equal(res.body.type, "urn:allot:problem:unavailable");
    assert.equal(res.headers.get("retry-after"), "1");
  }
}

Deno.test("a store that cannot serve answers 503 with Retry-After, not 500", async (t) => {
  await t.step("SQLite busy: 'database is locked'", async () => {
    const { kv, state } = failingKv(
      await Deno.openKv(":memory:"),
      () => new TypeError("database is locked"),
    );
    await using app = await makeApp({ kv });
    await seedRegion(app, "iad", 2);
    const granted = await claim(app, "iad", { holder: "before" });
    state.failing = true;
    await expectUnavailable(app, granted.body.id);
    state.failing = false;
    assert.equal((await claim(app, "iad", { holder: "after" })).status, 201, "it recovers");
    kv.close();
  });

  await t.step("a KV handle closed under calls in flight", async () => {
    const kv = await Deno.openKv(":memory:");
    await using app = await makeApp({ kv });
    await seedRegion(app, "iad", 50, { slots: 4 });
    const answers = Array.from(
      { length: 40 },
      (_, i) =>
        i % 2
          ? claim(app, "iad", { holder: `h${i}` })
          : app.request("GET", "/v1/regions/iad/resources"),
    );
    await new Promise((resolve) => setTimeout(resolve, 0));
    kv.close();
    const statuses = new Set((await Promise.all(answers)).map((res) => res.status));
    assert.ok(!statuses.has(500), `answers: ${[...statuses]}`);
    assert.ok(statuses.has(503), "some calls were in flight");
  });

  await t.step("a closed KV handle (a shutdown)", async () => {
    const kv = await Deno.openKv(":memory:");
    await using app = await makeApp({ kv });
    await seedRegion(app, "iad", 2);
    const granted = await claim(app, "iad", { holder: "before" });
    kv.close();
    await expectUnavailable(app, granted.body.id);
  });

  await t.step("readiness says so, with Retry-After; liveness does not", async () => {
    const kv = await Deno.openKv(":memory:");
    await using app = await makeApp({ kv });
    assert.equal((await app.request("GET", "/readyz")).status, 200);
    kv.close();
    const ready = await app.request("GET", "/readyz");
    assert.equal(ready.status, 503);
    assert.deepEqual(ready.body, { status: "unavailable" });
    assert.equal(ready.headers.get("retry-after"), "1");
    assert.equal((await app.request("GET", "/healthz")).status, 200);
  });
});

/**
 * A KV Connect server (ALLOT_KV as a URL) that completes the metadata exchange, then refuses
 * every data call with `status`, as a rate-limited remote store does.
 */
function refusingKvConnect(status: number): Deno.HttpServer<Deno.NetAddr> {
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    const { pathname, host } = new URL(req.url);
    await req.arrayBuffer();
    if (pathname !== "/") return new Response("slow down", { status });
    return Response.json({
      version: 3,
      databaseId: crypto.randomUUID(),
      endpoints: [{ url: `http://${host}/data`, consistency: "strong" }],
      token: "data-plane-token-0000000000000000",
      expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
    });
  });
  return server;
}

/** A KV handle opened over a KV Connect server that refuses every data call with `status`. */
async function withRefusingKvConnect(status: number, use: (kv: Deno.Kv) => Promise<void>) {
  await using server = refusingKvConnect(status);
  const previous = Deno.env.get("DENO_KV_ACCESS_TOKEN");
  Deno.env.set("DENO_KV_ACCESS_TOKEN", "kv-connect-test-token-000000000000");
  try {
    const kv = await Deno.openKv(`http://127.0.0.1:${server.addr.port}/`);
    try {
      await use(kv);
    } finally {
      kv.close();
    }
  } finally {
    if (previous === undefined) Deno.env.delete("DENO_KV_ACCESS_TOKEN");
    else Deno.env.set("DENO_KV_ACCESS_TOKEN", previous);
  }
}

Deno.test("a KV Connect store that asks to be called later (429, 408) answers 503 with Retry-After", async (t) => {
  for (const status of [429, 408]) {
    await t.step(String(status), () =>
      withRefusingKvConnect(status, async (kv) => {
        await using app = await makeApp({ kv });
        await expectUnavailable(app, "iad.01JD3J3ZK6S6M2P1TQ4Z3X9V7A");
        assert.equal((await app.request("GET", "/readyz")).status, 503);
      }));
  }
});

Deno.test("a KV Connect refusal that a retry cannot cure (400, 401, 413) is a 500, not a 503", async (t) => {
  for (const status of [400, 401, 413]) {
    await t.step(String(status), () =>
      withRefusingKvConnect(status, async (kv) => {
        await using app = await makeApp({ kv });
        // Straight to the app: its helper refuses a 500, which no operation documents.
        const res = await app.app.request("/v1/regions/iad", {
          headers: { authorization: `Bearer ${TOKENS.admin}` },
        });
        assert.equal(res.status, 500);
        assert.equal(res.headers.get("retry-after"), null);
      }));
  }
});

Deno.test("storeAnswers() gives up on a store that does not answer in time: not ready, rather than a hung probe", async () => {
  const silent = { get: () => new Promise(() => {}) } as unknown as Deno.Kv;
  assert.equal(await storeAnswers(silent, 20), false);
  const kv = await Deno.openKv(":memory:");
  try {
    assert.equal(await storeAnswers(kv, 20_000), true, "an answering store: at once");
  } finally {
    kv.close();
  }
});
