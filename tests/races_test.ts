/**
 * A write that lands inside another operation's window between its reads and its commit,
 * from a second app instance over the same KV (as another isolate would): the operation's
 * checks must catch it, whichever of the two it is.
 */
import assert from "node:assert/strict";
import { keys } from "../lib/keys.ts";
import {
  assertProblem,
  claim,
  makeApp,
  poolOf,
  racingApps,
  release,
  renew,
  seedRegion,
  type TestApp,
  TOKENS,
} from "./_helpers.ts";

const putResource = (t: TestApp, id: string, body: Record<string, unknown>) =>
  t.request("PUT", `/v1/regions/iad/resources/${id}`, { body });

Deno.test("a drain that lands between a claim's read and its commit: no grant on the draining resource", async () => {
  await using r = await racingApps();
  await seedRegion(r.racer, "iad", 1);
  r.hook.arm(async () => {
    const drained = await putResource(r.racer, "res-0000", { slots: 1, state: "draining" });
    assert.equal(drained.status, 200);
  });
  const res = await claim(r.subject, "iad", { holder: "a" });
  assert.ok(r.hook.fired());
  assertProblem(res, 503);
  assert.deepEqual(await poolOf(r.racer, "iad"), { free: 0, claimed: 0, total: 1 });
});

Deno.test("a renew that lands between a release's read and its commit leaves no expiry entry behind", async () => {
  await using r = await racingApps();
  await seedRegion(r.racer, "iad", 1);
  const a = (await claim(r.racer, "iad", { holder: "a", leaseMs: 10_000 })).body;
  r.subject.clock.advance(1000);
  r.hook.arm(async () => {
    assert.equal((await renew(r.racer, a.id, a.secret, { leaseMs: 20_000 })).status, 200);
  });
  assert.equal((await release(r.subject, a.id, a.secret)).status, 204);
  assert.ok(r.hook.fired());
  const left = await Array.fromAsync(r.racer.kv.list({ prefix: keys.leases("iad") }));
  assert.deepEqual(left.map((e) => e.key), [], "the sweep chain would never end");
});

Deno.test("two PUTs creating one resource at once count its slots once", async () => {
  await using r = await racingApps();
  await r.racer.request("PUT", "/v1/regions/iad", { body: {} });
  r.hook.arm(async () => {
    assert.equal((await putResource(r.racer, "x", { slots: 2 })).status, 201);
  });
  assert.ok([200, 201].includes((await putResource(r.subject, "x", { slots: 2 })).status));
  assert.ok(r.hook.fired());
  assert.deepEqual(await poolOf(r.racer, "iad"), { free: 2, claimed: 0, total: 2 });
});

Deno.test("one Idempotency-Key sent to two instances at once makes one claim, and both answer it", async () => {
  for (let round = 0; round < 3; round++) {
    await using r = await racingApps();
    await seedRegion(r.racer, "iad", 50);
    const key = { "idempotency-key": "job-1" };
    let first: { id: string } | null = null;
    r.hook.arm(async () => {
      first = (await claim(r.racer, "iad", { holder: "a" }, key)).body;
    });
    const second = await claim(r.subject, "iad", { holder: "a" }, key);
    assert.ok(r.hook.fired());
    assert.equal(second.status, 201, JSON.stringify(second.body));
    assert.equal(second.body.id, first!.id);
    assert.deepEqual(await poolOf(r.racer, "iad"), { free: 49, claimed: 1, total: 50 });
  }
});

Deno.test("two requests with one Idempotency-Key in one isolate at once take one slot", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 10);
  const key = { "idempotency-key": "dup" };
  const [, a, b] = await Promise.all([
    claim(t, "iad", { holder: "x" }),
    claim(t, "iad", { holder: "d" }, key),
    claim(t, "iad", { holder: "d" }, key),
  ]);
  assert.equal(a.body.id, b.body.id);
  assert.deepEqual(await poolOf(t, "iad"), { free: 8, claimed: 2, total: 10 });
});

Deno.test("a replay answers the fencing token the grant had, also for a grant deep in its group", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 10);
  const keyNames = ["k0", "k1", "k2", "k3", "k4"];
  const grants = await Promise.all(
    keyNames.map((k) => claim(t, "iad", { holder: "h" }, { "idempotency-key": k })),
  );
  for (const [i, k] of keyNames.entries()) {
    const again = await claim(t, "iad", { holder: "h" }, { "idempotency-key": k });
    assert.equal(again.body.fencingToken, grants[i].body.fencingToken, k);
    const read = await t.request("GET", `/v1/claims/${grants[i].body.id}`, {
      token: TOKENS.client,
    });
    assert.equal(read.body.fencingToken, grants[i].body.fencingToken, k);
  }
});
