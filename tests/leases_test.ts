import assert from "node:assert/strict";
import { LEASE_CEILING_MS, sweepExpired } from "../lib/leases.ts";
import { handleQueueMessage } from "../lib/queue.ts";
import {
  assertProblem,
  claim,
  FakeClock,
  getClaim,
  leaseQueueDeps,
  makeApp,
  poolOf,
  release,
  renew,
  seedRegion,
  type TestApp,
} from "./_helpers.ts";

const iso = (ms: number) => new Date(ms).toISOString();
const expireMessage = (claimId: string, expiresAt: number) => ({
  type: "lease.expire" as const,
  claimId,
  expiresAt,
});

async function oneSlotRegion(t: TestApp, lease = { defaultMs: 1000, maxMs: 5000 }) {
  await seedRegion(t, "iad", 1, { config: { lease } });
}

Deno.test("lease lengths are clamped to the region's lease.maxMs and tell the truth", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 5, { config: { lease: { defaultMs: 1000, maxMs: 5000 } } });
  const now = app.clock.now();

  await t.step("leaseMs above maxMs is clamped, not refused", async () => {
    const res = await claim(app, "iad", { holder: "h", leaseMs: 60_000 });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.leaseMs, 5000);
    assert.equal(res.body.leaseExpiresAt, iso(now + 5000));
    assert.equal((await getClaim(app, res.body.id)).leaseExpiresAt, iso(now + 5000));
  });

  await t.step("no leaseMs takes lease.defaultMs", async () => {
    const res = await claim(app, "iad", { holder: "h" });
    assert.equal(res.status, 201);
    assert.equal(res.body.leaseMs, 1000);
    assert.equal(res.body.leaseExpiresAt, iso(now + 1000));
  });

  await t.step("a renew above maxMs is clamped from the renew's time", async () => {
    const res = await claim(app, "iad", { holder: "h", leaseMs: 2000 });
    app.clock.advance(700);
    const renewed = await renew(app, res.body.id, res.body.secret, { leaseMs: 99_999 });
    assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
    assert.equal(renewed.body.leaseMs, 5000);
    assert.equal(renewed.body.leaseExpiresAt, iso(now + 700 + 5000));
    assert.equal(renewed.body.fencingToken, res.body.fencingToken);
    const read = await getClaim(app, res.body.id);
    assert.equal(read.leaseExpiresAt, iso(now + 700 + 5000));
  });

  await t.step("any positive leaseMs is clamped, however large, on claim and renew", async () => {
    for (const leaseMs of [31 * 24 * 3600 * 1000, Number.MAX_SAFE_INTEGER, 1e16, 1e300]) {
      const res = await claim(app, "iad", { holder: "h", leaseMs });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(res.body.leaseMs, 5000);
      const renewed = await renew(app, res.body.id, res.body.secret, { leaseMs });
      assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
      assert.equal(renewed.body.leaseMs, 5000);
      assert.equal((await release(app, res.body.id, res.body.secret)).status, 204);
    }
  });

  await t.step(
    "a region may allow any positive lease; a lease stops at LEASE_CEILING_MS",
    async () => {
      const huge = { defaultMs: Number.MAX_SAFE_INTEGER, maxMs: 1e300 };
      const put = await app.request("PUT", "/v1/regions/iad", { body: { lease: huge } });
      assert.equal(put.status, 200, JSON.stringify(put.body));
      assert.deepEqual(put.body.lease, huge);
      const res = await claim(app, "iad", { holder: "h" });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(res.body.leaseMs, LEASE_CEILING_MS);
      assert.equal(res.body.leaseExpiresAt, iso(now + 700 + LEASE_CEILING_MS));
      const renewed = await renew(app, res.body.id, res.body.secret, { leaseMs: 1e300 });
      assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
      assert.equal(renewed.body.leaseExpiresAt, iso(now + 700 + LEASE_CEILING_MS));
    },
  );

  await t.step("a fraction is refused, naming the field, however close to an integer", async () => {
    for (const leaseMs of [1.5, 3599999.9999999995, 100000000000.00005, 5e-324]) {
      const res = await claim(app, "iad", { holder: "h", leaseMs }, { "idempotency-key": "k" });
      assertProblem(res, 422);
      assert.equal(res.body.field, "leaseMs");
      assert.match(res.body.detail, /must be an integer/);
    }
    const region = await app.request("PUT", "/v1/regions/iad", {
      body: { lease: { defaultMs: 1, maxMs: 0.9999999999999999 } },
    });
    assertProblem(region, 422);
    assert.equal(region.body.field, "lease.maxMs");
  });
});

Deno.test("an expired lease is taken over with a larger fencing token and its holder gets 409", async () => {
  await using t = await makeApp();
  await oneSlotRegion(t);
  const a = await claim(t, "iad", { holder: "a", leaseMs: 1000 });
  assert.equal(a.status, 201);

  const busy = await claim(t, "iad", { holder: "b" });
  assertProblem(busy, 503);
  assert.equal(busy.headers.get("retry-after"), "1");

  t.clock.advance(999);
  assertProblem(await claim(t, "iad", { holder: "b" }), 503);
  assert.equal((await getClaim(t, a.body.id)).state, "active");

  t.clock.advance(1); // now == expiresAt: the lease has run out
  const b = await claim(t, "iad", { holder: "b", leaseMs: 1000 });
  assert.equal(b.status, 201, JSON.stringify(b.body));
  assert.equal(b.body.resource, a.body.resource);
  assert.equal(b.body.slot, a.body.slot);
  assert.equal(b.body.fencingToken.length, a.body.fencingToken.length);
  assert.ok(b.body.fencingToken > a.body.fencingToken, "fencing token increases");

  assertProblem(await renew(t, a.body.id, a.body.secret), 409);
  assertProblem(await release(t, a.body.id, a.body.secret), 409);
  const old = await getClaim(t, a.body.id);
  assert.equal(old.state, "expired");
  assert.notEqual(old.endedAt, null);
  assert.equal((await getClaim(t, b.body.id)).state, "active");
  assert.deepEqual(await poolOf(t, "iad"), { free: 0, claimed: 1, total: 1 });
});

Deno.test("an expired lease's holder gets 409 even before anyone sweeps it", async () => {
  await using t = await makeApp();
  await oneSlotRegion(t);
  const a = await claim(t, "iad", { holder: "a", leaseMs: 1000 });
  t.clock.advance(1000);
  assertProblem(await renew(t, a.body.id, a.body.secret), 409);
  assert.equal((await getClaim(t, a.body.id)).state, "expired");
  // The refused renew freed the slot: the next claim gets it without a sweep.
  assert.deepEqual(await poolOf(t, "iad"), { free: 1, claimed: 0, total: 1 });

  const b = await claim(t, "iad", { holder: "b", leaseMs: 1000 });
  t.clock.advance(1000);
  assertProblem(await release(t, b.body.id, b.body.secret), 409);
  assert.equal((await getClaim(t, b.body.id)).state, "expired");
  assert.deepEqual(await poolOf(t, "iad"), { free: 1, claimed: 0, total: 1 });
});

Deno.test("sweepExpired() expires exactly the leases that are due", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 3, { config: { lease: { defaultMs: 1000, maxMs: 5000 } } });
  const short = await claim(t, "iad", { holder: "a", leaseMs: 1000 });
  const exact = await claim(t, "iad", { holder: "b", leaseMs: 2000 });
  const long = await claim(t, "iad", { holder: "c", leaseMs: 3000 });
  t.clock.advance(2000);
  assert.equal(await sweepExpired(t.kv, t.clock, "iad"), 2);
  assert.equal((await getClaim(t, short.body.id)).state, "expired");
  assert.equal((await getClaim(t, exact.body.id)).state, "expired");
  assert.equal((await getClaim(t, long.body.id)).state, "active");
  assert.equal(await sweepExpired(t.kv, t.clock, "iad"), 0);
  assert.deepEqual(await poolOf(t, "iad"), { free: 2, claimed: 1, total: 3 });
});

Deno.test("lease.expire queue messages expire due leases only, and are idempotent", async (t) => {
  await using app = await makeApp();
  await oneSlotRegion(app);
  const deps = leaseQueueDeps(app);
  const start = app.clock.now();
  const a = await claim(app, "iad", { holder: "a", leaseMs: 1000 });
  const aMessage = expireMessage(a.body.id, start + 1000);

  await t.step("an early delivery does not expire the lease", async () => {
    app.clock.advance(500);
    assert.notEqual(await handleQueueMessage(deps, aMessage), "expired");
    assert.equal((await getClaim(app, a.body.id)).state, "active");
    assert.deepEqual(await poolOf(app, "iad"), { free: 0, claimed: 1, total: 1 });
  });

  await t.step("a due delivery frees the slot", async () => {
    app.clock.advance(500);
    assert.equal(await handleQueueMessage(deps, aMessage), "expired");
    assert.equal((await getClaim(app, a.body.id)).state, "expired");
    assert.deepEqual(await poolOf(app, "iad"), { free: 1, claimed: 0, total: 1 });
  });

  const b = await claim(app, "iad", { holder: "b", leaseMs: 1000 });
  assert.equal(b.status, 201);

  await t.step("a redelivered message is harmless to the slot's next holder", async () => {
    for (let i = 0; i < 3; i++) {
      assert.equal(await handleQueueMessage(deps, aMessage), "stale");
    }
    assert.equal((await getClaim(app, a.body.id)).state, "expired");
    assert.equal((await getClaim(app, b.body.id)).state, "active");
    assert.deepEqual(await poolOf(app, "iad"), { free: 0, claimed: 1, total: 1 });
    assertProblem(await claim(app, "iad", { holder: "c" }), 503);
  });

  await t.step("a message for a renewed lease does not expire it", async () => {
    const bFirstExpiry = app.clock.now() + 1000;
    app.clock.advance(600);
    const renewed = await renew(app, b.body.id, b.body.secret, { leaseMs: 1000 });
    assert.equal(renewed.status, 200);
    const bSecondExpiry = app.clock.now() + 1000;
    app.clock.advance(400); // the first expiry time: due for the old message, not the lease
    assert.notEqual(
      await handleQueueMessage(deps, expireMessage(b.body.id, bFirstExpiry)),
      "expired",
    );
    assert.equal((await getClaim(app, b.body.id)).state, "active");
    assert.deepEqual(await poolOf(app, "iad"), { free: 0, claimed: 1, total: 1 });
    const still = await renew(app, b.body.id, b.body.secret);
    assert.equal(still.status, 200, "the holder still holds its lease");
    app.clock.time = Date.parse(still.body.leaseExpiresAt);
    assert.equal(
      await handleQueueMessage(deps, expireMessage(b.body.id, bSecondExpiry)),
      "expired",
      "any message for the claim expires it once it is really due",
    );
    assert.equal((await getClaim(app, b.body.id)).state, "expired");
    assertProblem(await renew(app, b.body.id, b.body.secret), 409);
  });

  await t.step("a message for an unknown claim is stale", async () => {
    assert.equal(
      await handleQueueMessage(deps, expireMessage("iad.01JD3J3ZK6S6M2P1TQ4Z3X9V7A", 1)),
      "stale",
    );
  });
});

Deno.test("a claim that finds no candidate reads again after its catch-up sweep, even when another isolate swept first", async () => {
  const clock = new FakeClock();
  await using a = await makeApp({ clock });
  await using b = await makeApp({ kv: a.kv, clock }); // a second isolate over the same KV
  await seedRegion(a, "iad", 8, { config: { lease: { defaultMs: 1000, maxMs: 5000 } } });
  for (let i = 0; i < 8; i++) assert.equal((await claim(a, "iad")).status, 201);
  clock.advance(1001); // every lease past expiry, before the sweep chain's next tick
  // Each claim's own sweep may find the leases already ended by the other's: the slots are
  // free all the same, so both are granted.
  const answers = await Promise.all([claim(a, "iad"), claim(b, "iad")]);
  assert.deepEqual(answers.map((r) => r.status), [201, 201], JSON.stringify(answers[1].body));
  assert.notEqual(answers[0].body.resource, answers[1].body.resource);
  assert.deepEqual(await poolOf(a, "iad"), { total: 8, free: 6, claimed: 2 });
});

Deno.test("a claim ended by a server whose clock is behind the granting one's does not end before it began", async () => {
  await using kv = await Deno.openKv(":memory:");
  const now = Date.UTC(2026, 0, 1);
  await using granter = await makeApp({ kv, clock: new FakeClock(now + 400) });
  await using ender = await makeApp({ kv, clock: new FakeClock(now) });
  await seedRegion(ender, "iad", 2);
  for (const end of ["release", "revoke"] as const) {
    const granted = await claim(granter, "iad");
    assert.equal(granted.status, 201);
    const res = end === "release"
      ? await release(ender, granted.body.id, granted.body.secret)
      : await ender.request("POST", `/v1/claims/${granted.body.id}/revoke`, {
        body: { reason: "maintenance" },
      });
    assert.ok(res.status < 300, JSON.stringify(res.body));
    const read = await getClaim(ender, granted.body.id);
    assert.equal(read.endedAt, read.createdAt, `${end}: ${JSON.stringify(read)}`);
  }
});

Deno.test("a renew by a server whose clock is behind the granting one's never makes endedAt precede createdAt", async () => {
  await using kv = await Deno.openKv(":memory:");
  const now = Date.UTC(2026, 0, 1);
  await using granter = await makeApp({ kv, clock: new FakeClock(now + 2000) });
  await using renewer = await makeApp({ kv, clock: new FakeClock(now) });
  await granter.request("PUT", "/v1/regions/iad", { body: {} });
  await granter.request("PUT", "/v1/regions/iad/resources/r0", { body: {} });
  const granted = await claim(granter, "iad", { holder: "h", leaseMs: 1000 });
  assert.equal(granted.status, 201);
  const renewed = await renew(renewer, granted.body.id, granted.body.secret);
  assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
  const read = await getClaim(granter, granted.body.id);
  assert.ok(
    read.endedAt === null || read.endedAt >= read.createdAt,
    `README: "A claim's endedAt is never before its createdAt, whichever server ends it": ${
      JSON.stringify({ state: read.state, createdAt: read.createdAt, endedAt: read.endedAt })
    }`,
  );
});
