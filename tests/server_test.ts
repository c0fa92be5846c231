import assert from "node:assert/strict";
import { join } from "node:path";
import { createApp } from "../app.ts";
import { TokenRegistry } from "../lib/auth.ts";
import { FakeClock, send, type TestResponse, TOKEN_SPECS, TOKENS } from "./_helpers.ts";

/** A real HTTP server on an ephemeral port over a file-backed KV. */
async function startServer(path: string, clock: FakeClock) {
  const kv = await Deno.openKv(path);
  const app = createApp({ kv, clock, tokens: await TokenRegistry.from(TOKEN_SPECS) });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  const base = `http://127.0.0.1:${server.addr.port}`;
  return {
    base,
    request: (method: string, url: string, options: Parameters<typeof send>[3] = {}) =>
      send(fetch, method, url, options, base),
    /** Stops serving and closes the KV, as a process exit would. */
    async stop() {
      await server.shutdown();
      kv.close();
    },
  };
}

Deno.test("a claim made over real HTTP survives a server and KV restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "allot-server-test-" });
  const path = join(dir, "allot.sqlite");
  const clock = new FakeClock();
  try {
    const first = await startServer(path, clock);
    let granted: TestResponse;
    try {
      assert.equal((await first.request("GET", "/healthz", { token: null })).status, 200);
      assert.equal((await first.request("PUT", "/v1/regions/iad", { body: {} })).status, 201);
      const res = await first.request("PUT", "/v1/regions/iad/resources/r1", {
        body: { slots: 1 },
      });
      assert.equal(res.status, 201);
      granted = await first.request("POST", "/v1/regions/iad/claims", {
        token: TOKENS.client,
        body: { holder: "h", leaseMs: 60_000 },
      });
      assert.equal(granted.status, 201, JSON.stringify(granted.body));
    } finally {
      await first.stop();
    }

    clock.advance(30_000);
    const second = await startServer(path, clock);
    try {
      const { id, secret, fencingToken } = granted.body;
      const read = await second.request("GET", `/v1/claims/${id}`, { token: TOKENS.client });
      assert.equal(read.status, 200);
      assert.equal(read.body.state, "active");
      assert.equal(read.body.fencingToken, fencingToken);
      const busy = await second.request("POST", "/v1/regions/iad/claims", {
        token: TOKENS.client,
        body: { holder: "other" },
      });
      assert.equal(busy.status, 503, "the slot is still held after the restart");
      const released = await second.request("DELETE", `/v1/claims/${id}`, {
        token: TOKENS.client,
        headers: { "allot-claim-secret": secret },
      });
      assert.equal(released.status, 204);
      const after = await second.request("GET", `/v1/claims/${id}`, { token: TOKENS.client });
      assert.equal(after.body.state, "released");
      const next = await second.request("POST", "/v1/regions/iad/claims", {
        token: TOKENS.client,
        body: { holder: "other" },
      });
      assert.equal(next.status, 201);
      assert.ok(next.body.fencingToken > fencingToken);
    } finally {
      await second.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bodies over the limit get 413 over real HTTP, declared or chunked", async (t) => {
  const server = await startServer(":memory:", new FakeClock());
  try {
    assert.equal((await server.request("PUT", "/v1/regions/iad", { body: {} })).status, 201);
    const claimWith = (body: BodyInit) =>
      fetch(`${server.base}/v1/regions/iad/claims`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKENS.client}`, "content-type": "application/json" },
        body,
      });
    const big = JSON.stringify({ holder: "x".repeat(70 * 1024) });

    await t.step("a Content-Length over 64 KiB is refused", async () => {
      const res = await claimWith(big);
      assert.equal(res.status, 413);
      assert.match((await res.json()).detail, /limited to 65536 bytes/);
    });

    await t.step("a chunked body is counted as it arrives", async () => {
      const chunks = new Blob([big]).stream();
      const res = await claimWith(chunks);
      assert.equal(res.status, 413);
      await res.body?.cancel();
    });

    await t.step("an unknown caller gets 401 before any size check", async () => {
      const res = await fetch(`${server.base}/v1/regions/iad/claims`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: big,
      });
      assert.equal(res.status, 401);
      await res.body?.cancel();
    });

    await t.step("a caller the route refuses gets 403, not 413", async () => {
      for (const body of [big, new Blob([big]).stream()]) {
        const res = await fetch(`${server.base}/v1/regions/iad/claims`, {
          method: "POST",
          headers: { authorization: `Bearer ${TOKENS.agent}`, "content-type": "application/json" },
          body,
        });
        assert.equal(res.status, 403);
        await res.body?.cancel();
      }
    });

    await t.step(
      "only the status route takes a status batch's size, whatever an id is",
      async () => {
        const res = await fetch(`${server.base}/v1/regions/iad/resources/status`, {
          method: "PUT",
          headers: { authorization: `Bearer ${TOKENS.admin}`, "content-type": "application/json" },
          body: JSON.stringify({ labels: { a: "x".repeat(100_000) } }),
        });
        assert.equal(res.status, 413);
        await res.body?.cancel();
      },
    );

    await t.step("a body no route reads (a DELETE's) is not measured", async () => {
      const res = await fetch(`${server.base}/v1/regions/iad/resources/none`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${TOKENS.admin}` },
        body: big,
      });
      assert.equal(res.status, 404);
      await res.body?.cancel();
    });

    await t.step("a body within the limit is read", async () => {
      const res = await claimWith(JSON.stringify({ holder: "h" }));
      assert.equal(res.status, 503, "parsed and routed: the region has no resource");
      await res.body?.cancel();
    });
  } finally {
    await server.stop();
  }
});

Deno.test("a JSON Content-Type with spaces around ';' (HTTP allows them) or '=' is JSON", async (t) => {
  const server = await startServer(":memory:", new FakeClock());
  try {
    const write = (type: string, body: string) =>
      server.request("PUT", "/v1/regions/iad", { body, headers: { "content-type": type } });
    for (
      const type of [
        "application/json ; charset=utf-8",
        "application/json;charset = utf-8",
        "Application/JSON\t;\tcharset=UTF-8 ",
        "application/json ;",
      ]
    ) {
      await t.step(JSON.stringify(type), async () => {
        const res = await write(type, JSON.stringify({ lease: { defaultMs: 5000 } }));
        assert.ok(res.status === 200 || res.status === 201, JSON.stringify(res.body));
        assert.equal(res.body.lease.defaultMs, 5000, "the body was read");
      });
    }
    await t.step("other types are still refused with 415, and bad JSON with 400", async () => {
      for (
        const type of [
          "text/plain ; charset=utf-8",
          "application/jsonx ; a=b",
          "application/json\u00a0; charset=utf-8", // a no-break space is not HTTP whitespace
        ]
      ) {
        assert.equal((await write(type, "{}")).status, 415, type);
      }
      assert.equal((await write("application/json ; charset=utf-8", "{")).status, 400);
    });
  } finally {
    await server.stop();
  }
});

Deno.test("HEAD answers the GET's headers, Content-Length included, without a body", async () => {
  const server = await startServer(":memory:", new FakeClock());
  try {
    assert.equal((await server.request("PUT", "/v1/regions/iad", { body: {} })).status, 201);
    const cases: Array<[string, string | null, number]> = [
      ["/healthz", TOKENS.admin, 200],
      ["/v1/regions/iad", TOKENS.admin, 200],
      ["/openapi.json", TOKENS.admin, 200],
      ["/v1/regions/iad", null, 401],
      ["/nowhere", TOKENS.admin, 404],
      ["/v1/regions/iad/status", TOKENS.admin, 405],
    ];
    for (const [path, token, status] of cases) {
      const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
      const get = await fetch(`${server.base}${path}`, { headers });
      const body = new Uint8Array(await get.arrayBuffer());
      const head = await fetch(`${server.base}${path}`, { method: "HEAD", headers });
      assert.equal(get.status, status, path);
      assert.equal(head.status, status, path);
      assert.equal(head.headers.get("content-length"), String(body.byteLength), path);
      assert.equal(head.headers.get("content-type"), get.headers.get("content-type"), path);
      assert.equal((await head.arrayBuffer()).byteLength, 0, path);
    }
  } finally {
    await server.stop();
  }
});

Deno.test("over real HTTP, a POST or PUT with no body and no Content-Type reads as {}", async () => {
  const server = await startServer(":memory:", new FakeClock());
  try {
    // No body, no Content-Type: fetch sends `Content-Length: 0`, Deno.serve an empty stream.
    const bare = (method: string, path: string, headers: Record<string, string> = {}) =>
      fetch(`${server.base}${path}`, {
        method,
        headers: { authorization: `Bearer ${TOKENS.admin}`, ...headers },
      });
    const region = await bare("PUT", "/v1/regions/iad");
    assert.equal(region.status, 201, await region.text());
    const resource = await bare("PUT", "/v1/regions/iad/resources/r0");
    assert.equal(resource.status, 201, await resource.text());
    const grant = await server.request("POST", "/v1/regions/iad/claims", {
      token: TOKENS.client,
      body: { holder: "h" },
    });
    assert.equal(grant.status, 201);
    const renewed = await bare("POST", `/v1/claims/${grant.body.id}/renew`, {
      "allot-claim-secret": grant.body.secret,
    });
    assert.equal(renewed.status, 200, await renewed.text());
    const claim = await bare("POST", "/v1/regions/iad/claims");
    assert.equal(claim.status, 422, "{} has no holder");
    await claim.body?.cancel();
  } finally {
    await server.stop();
  }
});
