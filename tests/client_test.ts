import assert from "node:assert/strict";
import { createApp } from "../app.ts";
import {
  AllotClient,
  AllotProblem,
  type ClaimGrant,
  InUseError,
  LeaseLostError,
  NetworkError,
  type RetryOptions,
  UnavailableError,
  withRetry,
} from "../client.ts";
import { TokenRegistry } from "../lib/auth.ts";
import { FakeClock, TOKEN_SPECS, TOKENS } from "./_helpers.ts";

/** A real HTTP server on an ephemeral port over a :memory: KV, and clients for each role. */
async function serve() {
  const kv = await Deno.openKv(":memory:");
  const clock = new FakeClock();
  const app = createApp({ kv, clock, tokens: TokenRegistry.from(TOKEN_SPECS) });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  const url = `http://127.0.0.1:${server.addr.port}`;
  const as = (token: string) => new AllotClient(url, { token });
  return {
    url,
    kv,
    clock,
    admin: as(TOKENS.admin),
    agent: as(TOKENS.agent),
    client: as(TOKENS.client),
    async [Symbol.asyncDispose]() {
      await server.shutdown();
      try {
        kv.close();
      } catch {
        // a test closed it to take the store away
      }
    },
  };
}

/** A region with `count` single-slot resources. */
async function seed(admin: AllotClient, region: string, count: number): Promise<void> {
  await admin.putRegion(region, { lease: { defaultMs: 30_000, maxMs: 600_000 } });
  for (let i = 0; i < count; i++) await admin.putResource(region, `r${i}`, { slots: 1 });
}

/** A sleep that records what it was asked to wait and returns at once. */
function recordingSleep(then: () => unknown = () => {}) {
  const waits: number[] = [];
  return {
    waits,
    sleep: async (ms: number) => {
      waits.push(ms);
      await then();
    },
  };
}

Deno.test("the typed client claims, renews, reads, lists and releases over real HTTP", async () => {
  await using s = await serve();
  await seed(s.admin, "iad", 2);
  const grant = await s.client.claim("iad", { holder: "worker-7", leaseMs: 60_000 });
  assert.equal(grant.servedBy, "iad");
  assert.equal(grant.leaseExpiresAt, new Date(s.clock.now() + 60_000).toISOString());

  s.clock.advance(10_000);
  const renewed = await s.client.renew(grant, 120_000);
  assert.equal(renewed.leaseExpiresAt, new Date(s.clock.now() + 120_000).toISOString());
  const read = await s.client.getClaim(grant.id, { consistencyToken: renewed.consistencyToken });
  assert.equal(read.state, "active");
  assert.equal(read.leaseMs, 120_000);

  const page = await s.client.listClaims("iad", {
    holder: "worker-7",
    state: "active",
    limit: 10,
    consistencyToken: renewed.consistencyToken,
  });
  assert.deepEqual(page.items.map((c) => c.id), [grant.id]);
  assert.equal(page.cursor, null);
  assert.ok(!("secret" in page.items[0]), "listings never show a secret");

  const { consistencyToken } = await s.client.release(grant);
  assert.match(consistencyToken, /^[0-9a-f]{20}$/);
  assert.equal((await s.client.getClaim(grant.id, { consistencyToken })).state, "released");
  const { items: [region], cursor } = await s.client.regions();
  assert.deepEqual([region.name, region.claimed, region.free], ["iad", 0, 2]);
  assert.equal(cursor, null);
});

Deno.test("the client pages regions and resources, reads and deletes a resource and a region", async () => {
  await using s = await serve();
  for (const region of ["a1", "b2", "c3"]) await s.admin.putRegion(region);
  const first = await s.client.regions({ limit: 2 });
  assert.deepEqual(first.items.map((r) => r.name), ["a1", "b2"]);
  const rest = await s.client.regions({ limit: 2, cursor: first.cursor! });
  assert.deepEqual(rest.items.map((r) => r.name), ["c3"]);

  await s.admin.putResource("a1", "host:1", { slots: 2 });
  await s.agent.putResource("a1", "host:2");
  assert.deepEqual((await s.client.getResource("a1", "host:1")).slots, 2, "':' in an id");
  const page = await s.client.listResources("a1", { limit: 1 });
  assert.deepEqual(page.items.map((r) => r.id), ["host:1"]);
  const next = await s.client.listResources("a1", { cursor: page.cursor! });
  assert.deepEqual(next.items.map((r) => r.id), ["host:2"]);
  const { consistencyToken } = await s.agent.deleteResource("a1", "host:2");
  const after = await s.client.listResources("a1", { consistencyToken });
  assert.deepEqual(after.items.map((r) => r.id), ["host:1"]);
  const gone = await s.client.getResource("a1", "host:2").catch((e) => e);
  assert.ok(gone instanceof AllotProblem && gone.status === 404, String(gone));

  const inUse = await s.admin.deleteRegion("a1").catch((e) => e);
  assert.ok(inUse instanceof InUseError && !(inUse instanceof LeaseLostError), String(inUse));
  assert.match(
    inUse.message,
    /^409 Still in use: Cannot delete region "a1": it still has resources/,
  );
  assert.match((await s.admin.deleteRegion("b2")).consistencyToken, /^[0-9a-f]{20}$/);
  assert.deepEqual((await s.client.regions()).items.map((r) => r.name), ["a1", "c3"]);
});

Deno.test("the client refuses ids that would leave their path segment, sending nothing", async () => {
  let sent = 0;
  await using s = await serve();
  await seed(s.admin, "iad", 1);
  const counting = new AllotClient(s.url, {
    token: TOKENS.admin,
    fetch: (input, init) => {
      sent++;
      return fetch(input, init);
    },
  });
  const attempts = [
    () => counting.release({ id: "../regions/iad/resources/r0", secret: "x" }),
    () => counting.getClaim(".."),
    () => counting.claim("iad/../fra", { holder: "h" }),
    () => counting.deleteResource("iad", "../../regions"),
    () => counting.putResource("iad", "a/b"),
    () => counting.region("iad?x=1"),
    () => counting.revoke("", "why"),
  ];
  for (const attempt of attempts) {
    const error = await attempt().then(() => null, (e) => e);
    assert.ok(error instanceof TypeError, String(error));
    assert.match(error.message, /not an allot id/);
  }
  assert.equal(sent, 0);
  assert.equal((await s.admin.getResource("iad", "r0")).id, "r0", "nothing was deleted");
});

Deno.test("the client reports status as an agent and reads the region's backlog", async () => {
  await using s = await serve();
  await seed(s.admin, "iad", 1);
  const accepted = await s.agent.reportStatus("iad", [
    { resource: "r0", seq: 1, state: "draining", load: 0.5 },
  ]);
  assert.equal(accepted.accepted, 1);
  assert.equal((await s.agent.region("iad")).pending, 1, "durable in the queue, not yet applied");
});

Deno.test("a retried claim with one idempotency key returns the same claim, and says what became of it", async () => {
  await using s = await serve();
  await seed(s.admin, "iad", 2);
  const first = await s.client.claim("iad", { holder: "h" }, { idempotencyKey: "job-1" });
  assert.equal(first.replay, undefined, "a first answer is no replay");
  const { replay, ...again } = await s.client.claim("iad", { holder: "h" }, {
    idempotencyKey: "job-1",
  });
  assert.deepEqual(again, first);
  assert.deepEqual(replay, { state: "active" });
  assert.equal((await s.client.region("iad")).claimed, 1);
  await s.client.release(first);
  const later = await s.client.claim("iad", { holder: "h" }, { idempotencyKey: "job-1" });
  assert.deepEqual([later.id, later.state, later.replay], [first.id, "active", {
    state: "released",
  }]);

  // A server from before Allot-Claim-State: the replay is told, its state is not.
  const older = new AllotClient(s.url, {
    token: TOKENS.client,
    fetch: async (input, init) => {
      const res = await fetch(input, init);
      const headers = new Headers(res.headers);
      headers.delete("allot-claim-state");
      return new Response(res.body, { status: res.status, headers });
    },
  });
  const told = await older.claim("iad", { holder: "h" }, { idempotencyKey: "job-1" });
  assert.deepEqual(told.replay, { state: null });
});

Deno.test("a lost answer is a NetworkError, which withRetry retries only when asked", async (t) => {
  await using s = await serve();
  await seed(s.admin, "iad", 3);
  /** A client whose next `drops` answers are lost after the server acted on the request. */
  const losing = (drops: number) =>
    new AllotClient(s.url, {
      token: TOKENS.client,
      fetch: async (input, init) => {
        const res = await fetch(input, init);
        if (drops-- <= 0) return res;
        await res.body?.cancel();
        throw new TypeError("error reading a body from connection: connection reset");
      },
    });
  const active = async (holder: string) =>
    (await s.client.listClaims("iad", { holder, state: "active" })).items.map((c) => c.id);
  const { waits, sleep } = recordingSleep();

  await t.step("by default it is thrown, as a TypeError, after one attempt", async () => {
    const error = await withRetry(
      () => losing(1).claim("iad", { holder: "a" }, { idempotencyKey: "job-a" }),
      { sleep },
    ).catch((e) => e);
    assert.ok(error instanceof NetworkError && error instanceof TypeError, String(error));
    assert.match(error.message, /lost: TypeError: error reading a body/);
    assert.deepEqual(waits, []);
    assert.equal((await active("a")).length, 1, "the server had claimed");
  });

  await t.step("with retryNetworkErrors, the key's claim comes back: one claim", async () => {
    const client = losing(2);
    const grant = await withRetry(
      () => client.claim("iad", { holder: "b" }, { idempotencyKey: "job-b" }),
      { sleep, retryNetworkErrors: true },
    );
    assert.deepEqual(waits, [250, 500]);
    assert.deepEqual(grant.replay, { state: "active" });
    assert.deepEqual(await active("b"), [grant.id]);
  });

  await t.step("a body cut off while it is read is a NetworkError too", async () => {
    const cut = new AllotClient(s.url, {
      token: TOKENS.admin,
      fetch: () =>
        Promise.resolve(
          new Response(
            new ReadableStream({ start: (c) => c.error(new TypeError("connection reset")) }),
            { status: 200, headers: { "content-type": "application/json" } },
          ),
        ),
    });
    const error = await cut.region("iad").catch((e) => e);
    assert.ok(error instanceof NetworkError, String(error));
  });
});

Deno.test("withRetry's onRetry gets a NetworkError only when asked to retry one; a URL fetch cannot use is refused at once", async () => {
  // Checked by the compiler: code written for 503s alone still reads the problem document.
  await withRetry(() => Promise.resolve(1), {
    onRetry: (error) => void error.problem.detail,
  });
  await withRetry(() => Promise.resolve(1), {
    retryNetworkErrors: true,
    // @ts-expect-error: a NetworkError carries no problem document
    onRetry: (error) => void error.problem.detail,
  });
  // An explicit result type, and options built once, type-check either way.
  await withRetry<number>(() => Promise.resolve(1), { retryNetworkErrors: true });
  const options: RetryOptions = { retryNetworkErrors: true, onRetry: (e) => void e.message };
  await withRetry<number>(() => Promise.resolve(1), options);
  for (const url of ["htp://allot.test", "not a url"]) {
    assert.throws(
      () => new AllotClient(url, { token: TOKENS.client }),
      (error) => error instanceof TypeError && !(error instanceof NetworkError),
    );
  }
});

Deno.test("an answer that is not a problem document keeps its text, and its status's error class", async () => {
  const answering = (status: number, body: string) =>
    new AllotClient("http://allot.test", {
      token: TOKENS.admin,
      fetch: () =>
        Promise.resolve(
          new Response(body, {
            status,
            statusText: "Proxy says no",
            headers: { "content-type": "application/json" },
          }),
        ),
    });
  const fail = (status: number, body: string) =>
    answering(status, body).region("iad").then(() => null, (e) => e);

  const proxied = await fail(502, '{"message":"upstream connect error"}');
  assert.ok(proxied instanceof AllotProblem, String(proxied));
  assert.deepEqual(
    [proxied.status, proxied.problem.title, proxied.problem.detail],
    [502, "Proxy says no", '{"message":"upstream connect error"}'],
  );
  assert.ok((await fail(503, "null")) instanceof UnavailableError);
  assert.ok((await fail(409, "null")) instanceof LeaseLostError);
  const problem = await fail(404, '{"type":"urn:allot:problem:not-found","detail":"gone"}');
  assert.deepEqual([problem.problem.type, problem.problem.detail, problem.problem.title], [
    "urn:allot:problem:not-found",
    "gone",
    "Proxy says no",
  ]);
});

Deno.test("a lost lease is a LeaseLostError carrying the problem document", async () => {
  await using s = await serve();
  await seed(s.admin, "iad", 1);
  const grant = await s.client.claim("iad", { holder: "h" });
  await s.admin.revoke(grant.id, "maintenance");
  for (const attempt of [() => s.client.renew(grant), () => s.client.release(grant)]) {
    const error = await attempt().then(() => null, (e) => e);
    assert.ok(error instanceof LeaseLostError, String(error));
    assert.equal(error.status, 409);
    assert.equal(error.problem.type, "urn:allot:problem:lease-lost");
    assert.match(error.message, /no longer active/);
  }
});

Deno.test("other failures are AllotProblems with the server's status and detail", async () => {
  await using s = await serve();
  await seed(s.admin, "iad", 1);
  const forbidden = await s.agent.claim("iad", { holder: "h" }).catch((e) => e);
  assert.ok(forbidden instanceof AllotProblem && !(forbidden instanceof LeaseLostError));
  assert.equal(forbidden.status, 403);
  const stranger = new AllotClient(s.url, { token: "not-a-configured-token" });
  const unauthorized = await stranger.regions().catch((e) => e);
  assert.equal(unauthorized.status, 401);
  const invalid = await s.admin.putRegion("fra", { lag: { enterMs: 100, exitMs: 200 } })
    .catch((e) => e);
  assert.equal(invalid.status, 422);
  assert.equal(invalid.problem.field, "lag.exitMs");
});

Deno.test("no capacity is an UnavailableError with Retry-After, and withRetry waits it out", async (t) => {
  await using s = await serve();
  await seed(s.admin, "iad", 1);
  const holder = await s.client.claim("iad", { holder: "first" });

  await t.step("the error carries Retry-After in seconds", async () => {
    const error = await s.client.claim("iad", { holder: "second" }).catch((e) => e);
    assert.ok(error instanceof UnavailableError, String(error));
    assert.equal(error.status, 503);
    assert.equal(error.problem.type, "urn:allot:problem:no-capacity");
    assert.ok(Number.isInteger(error.retryAfter) && error.retryAfter > 0);
  });

  await t.step("a bounded retry gives up with the last 503", async () => {
    const { waits, sleep } = recordingSleep();
    const error = await withRetry(() => s.client.claim("iad", { holder: "second" }), {
      attempts: 3,
      sleep,
    }).catch((e) => e);
    assert.ok(error instanceof UnavailableError);
    assert.equal(waits.length, 2, "3 attempts, 2 waits");
    assert.ok(waits.every((ms) => ms === error.retryAfter * 1000), `waits ${waits}`);
  });

  await t.step(
    "a retry succeeds once the slot is free, waiting no longer than maxDelayMs",
    async () => {
      const { waits, sleep } = recordingSleep(() => s.client.release(holder));
      const retried: number[] = [];
      const grant: ClaimGrant = await withRetry(
        () => s.client.claim("iad", { holder: "second" }, { idempotencyKey: "k" }),
        { sleep, maxDelayMs: 250, onRetry: (_e, attempt) => retried.push(attempt) },
      );
      assert.equal(grant.holder, "second");
      assert.deepEqual(waits, [250]);
      assert.deepEqual(retried, [1]);
    },
  );

  await t.step("errors other than 503 are not retried", async () => {
    const { waits, sleep } = recordingSleep();
    const error = await withRetry(() => s.agent.claim("iad", { holder: "x" }), { sleep })
      .catch((e) => e);
    assert.equal(error.status, 403);
    assert.deepEqual(waits, []);
  });
});

Deno.test("the README's example script claims, renews and releases against a real server", async () => {
  await using s = await serve();
  await seed(s.admin, "iad", 1);
  const run = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", "examples/claim.ts", "iad"],
    cwd: new URL("..", import.meta.url),
    env: { ALLOT_URL: s.url, ALLOT_TOKEN: TOKENS.client, NO_COLOR: "1" },
  }).output();
  const out = new TextDecoder().decode(run.stdout);
  assert.equal(run.code, 0, new TextDecoder().decode(run.stderr));
  assert.match(out, /^claimed iad\/r0 slot 0 \(fencing token [0-9a-f]{24}\) until /m);
  assert.match(out, /^renewed until /m);
  assert.match(out, /^released$/m);
  assert.equal((await s.client.region("iad")).claimed, 0);
});

Deno.test("the typed client reads liveness and readiness, with no token needed", async () => {
  await using s = await serve();
  const anonymous = new AllotClient(s.url, { token: "not-a-token" });
  assert.deepEqual(await anonymous.health(), { status: "ok" });
  assert.deepEqual(await anonymous.ready(), { status: "ok" });
  s.kv.close(); // the store goes away: the process is alive, not ready
  assert.deepEqual(await anonymous.health(), { status: "ok" });
  assert.deepEqual(await anonymous.ready(), { status: "unavailable" });
});
