import assert from "node:assert/strict";
import { listClaims } from "../lib/claims.ts";
import { sweepExpired } from "../lib/leases.ts";
import {
  assertProblem,
  claim,
  getClaim,
  kvWith,
  listPages,
  makeApp,
  poolOf,
  release,
  renew,
  seedRegion,
  snapshotKv,
  type TestApp,
  TOKENS,
} from "./_helpers.ts";

/** Asserts no secret (nor its hash) appears anywhere in an answer. */
function assertNoSecret(body: unknown, secrets: readonly string[]): void {
  const text = JSON.stringify(body);
  assert.ok(!/"secret(Hash)?"/.test(text), `a secret field leaked: ${text.slice(0, 200)}`);
  for (const secret of secrets) assert.ok(!text.includes(secret), "a claim secret leaked");
}

Deno.test("a wrong or missing Allot-Claim-Secret gets 403 and changes nothing", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 1);
  const held = await claim(t, "iad", { holder: "h", leaseMs: 10_000 });
  const { id, secret } = held.body;
  const other = await claim(t, "iad", { holder: "x" });
  assertProblem(other, 503);

  const before = await snapshotKv(t.kv);
  const wrong = secret.slice(0, -2) + (secret.endsWith("AA") ? "BB" : "AA");
  for (const presented of [null, wrong, "", "x".repeat(256)]) {
    assertProblem(await renew(t, id, presented, { leaseMs: 20_000 }), 403);
    assertProblem(await release(t, id, presented), 403);
  }
  assert.deepEqual(await snapshotKv(t.kv), before);

  const read = await getClaim(t, id);
  assert.equal(read.state, "active");
  assert.equal(read.leaseExpiresAt, held.body.leaseExpiresAt);
  assertProblem(await claim(t, "iad", { holder: "x" }), 503);
  assert.equal((await release(t, id, secret)).status, 204);
});

Deno.test("a release sent again answers 204 as the first did; only a lease that ended otherwise is 409", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 2);

  await t.step("a repeated release changes nothing and carries the release's token", async () => {
    const { id, secret } = (await claim(app, "iad", { holder: "h" })).body;
    const first = await release(app, id, secret);
    assert.equal(first.status, 204);
    const token = first.headers.get("allot-consistency-token");
    assert.ok(token);
    const before = await snapshotKv(app.kv);
    // Sent twice at once too: the group committer holds a repeat of one claim for a turn.
    const again = await Promise.all([release(app, id, secret), release(app, id, secret)]);
    for (const res of again) {
      assert.equal(res.status, 204);
      assert.equal(res.headers.get("allot-consistency-token"), token);
    }
    assert.deepEqual(await snapshotKv(app.kv), before);
    assert.equal((await getClaim(app, id)).state, "released");
    assert.deepEqual(await poolOf(app, "iad"), { free: 2, claimed: 0, total: 2 });
  });

  await t.step("the secret is still required on a released claim", async () => {
    const { id, secret } = (await claim(app, "iad", { holder: "h" })).body;
    assert.equal((await release(app, id, secret)).status, 204);
    assertProblem(await release(app, id, null), 403);
    assertProblem(await release(app, id, secret.slice(0, -2) + "AA"), 403);
  });

  await t.step("expired and revoked leases stay 409", async () => {
    const lapsed = (await claim(app, "iad", { holder: "h", leaseMs: 1000 })).body;
    const revoked = (await claim(app, "iad", { holder: "h" })).body;
    const res = await app.request("POST", `/v1/claims/${revoked.id}/revoke`, {
      token: TOKENS.admin,
      body: { reason: "maintenance" },
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    app.clock.advance(1000);
    assertProblem(await release(app, lapsed.id, lapsed.secret), 409);
    assertProblem(await release(app, revoked.id, revoked.secret), 409);
    assert.equal((await getClaim(app, lapsed.id)).state, "expired");
    assert.equal((await getClaim(app, revoked.id)).state, "lost");
  });
});

Deno.test("a granted claim's Location names it, also when replayed", async () => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 2);
  const granted = await claim(app, "iad", { holder: "h" }, { "idempotency-key": "k1" });
  assert.equal(granted.status, 201);
  const location = granted.headers.get("location");
  assert.equal(location, `/v1/claims/${granted.body.id}`);
  const read = await app.request("GET", location!, { token: TOKENS.client });
  assert.equal(read.status, 200);
  assert.equal(read.body.id, granted.body.id);
  const replayed = await claim(app, "iad", { holder: "h" }, { "idempotency-key": "k1" });
  assert.equal(replayed.headers.get("idempotent-replayed"), "true");
  assert.equal(replayed.headers.get("location"), location);
});

Deno.test("another claim's secret does not open a claim", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 2);
  const a = await claim(t, "iad", { holder: "a" });
  const b = await claim(t, "iad", { holder: "b" });
  assertProblem(await release(t, a.body.id, b.body.secret), 403);
  assertProblem(await renew(t, b.body.id, a.body.secret), 403);
  assert.equal((await getClaim(t, a.body.id)).state, "active");
  assert.equal((await getClaim(t, b.body.id)).state, "active");
});

Deno.test("reading claims never reveals a secret", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 10);
  const secrets: string[] = [];
  const ids: Record<string, string[]> = { alice: [], bob: [] };
  for (let i = 0; i < 7; i++) {
    const holder = i % 3 === 0 ? "bob" : "alice";
    const res = await claim(app, "iad", { holder });
    assert.equal(res.status, 201);
    secrets.push(res.body.secret);
    ids[holder].push(res.body.id);
    if (i === 1) assert.equal((await release(app, res.body.id, res.body.secret)).status, 204);
  }

  await t.step("GET /v1/claims/{id} has no secret", async () => {
    for (const id of [...ids.alice, ...ids.bob]) {
      const read = await app.request("GET", `/v1/claims/${id}`, { token: TOKENS.client });
      assert.equal(read.status, 200);
      assert.equal(read.body.id, id);
      assertNoSecret(read.body, secrets);
    }
  });

  await t.step("the region's claim list filters, paginates and hides secrets", async () => {
    const all = await listPages<{ id: string; holder: string; state: string }>(
      app,
      "/v1/regions/iad/claims?limit=2",
    );
    assert.ok(all.pages >= 4, `paginated over ${all.pages} pages`);
    assert.deepEqual(
      all.items.map((c) => c.id).sort(),
      [...ids.alice, ...ids.bob].sort(),
      "every claim exactly once",
    );
    assertNoSecret(all.items, secrets);

    const bob = await listPages<{ id: string; holder: string }>(
      app,
      "/v1/regions/iad/claims?holder=bob&limit=1",
    );
    assert.deepEqual(bob.items.map((c) => c.id).sort(), ids.bob.slice().sort());
    assert.ok(bob.items.every((c) => c.holder === "bob"));

    const clientView = await listPages(app, "/v1/regions/iad/claims?holder=alice", TOKENS.client);
    assert.equal(clientView.items.length, ids.alice.length);
    assertNoSecret(clientView.items, secrets);
  });
});

Deno.test("the region's claim list filters by state", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 6, { config: { lease: { defaultMs: 1000, maxMs: 5000 } } });
  const grants = [];
  for (let i = 0; i < 6; i++) {
    const leaseMs = i === 4 ? 5000 : 1000;
    grants.push((await claim(t, "iad", { holder: `h${i}`, leaseMs })).body);
  }
  assert.equal((await release(t, grants[0].id, grants[0].secret)).status, 204);
  assert.equal((await release(t, grants[1].id, grants[1].secret)).status, 204);
  const revoked = await t.request("POST", `/v1/claims/${grants[2].id}/revoke`, {
    body: { reason: "test" },
  });
  assert.equal(revoked.status, 200);
  t.clock.advance(1000);
  assertProblem(await renew(t, grants[3].id, grants[3].secret), 409); // expires it

  const byState = async (state: string) =>
    (await listPages<{ id: string; state: string }>(
      t,
      `/v1/regions/iad/claims?state=${state}&limit=1`,
    ))
      .items.map((c) => c.id).sort();
  assert.deepEqual(await byState("released"), [grants[0].id, grants[1].id].sort());
  assert.deepEqual(await byState("lost"), [grants[2].id]);
  // grants[5] ran out too, though no sweep, renew or release has recorded it yet.
  assert.deepEqual(await byState("expired"), [grants[3].id, grants[5].id].sort());
  assert.deepEqual(await byState("active"), [grants[4].id]);
  const bad = await t.request("GET", "/v1/regions/iad/claims?state=zombie");
  assertProblem(bad, 400, "state");
});

Deno.test("the active claims are listed from the lease index, however many ended claims a region keeps", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 8);
  // 60 claims come and go first: a scan of the claim records (10 × limit a page) finds
  // none of the live ones behind them at limit 5.
  for (let i = 0; i < 60; i++) {
    const held = await claim(app, "iad", { holder: "gone" });
    assert.equal((await release(app, held.body.id, held.body.secret)).status, 204);
  }
  const live: Array<{ id: string }> = [];
  for (const [i, leaseMs] of [50_000, 20_000, 40_000, 10_000, 30_000].entries()) {
    live.push((await claim(app, "iad", { holder: i % 2 ? "odd" : "even", leaseMs })).body);
  }
  const soonestFirst = [3, 1, 4, 2, 0].map((i) => live[i].id);

  await t.step("one page holds them, soonest expiry first, without a secret", async () => {
    const page = await app.request("GET", "/v1/regions/iad/claims?state=active&limit=5");
    assert.equal(page.status, 200, JSON.stringify(page.body));
    assert.deepEqual(page.body.items.map((c: { id: string }) => c.id), soonestFirst);
    assert.equal(page.body.cursor, null);
    assert.ok(page.body.items.every((c: object) => !("secret" in c)));
  });

  await t.step("paged, and filtered by holder", async () => {
    const paged = await listPages<{ id: string }>(
      app,
      "/v1/regions/iad/claims?state=active&limit=2",
    );
    assert.deepEqual(paged.items.map((c) => c.id), soonestFirst);
    const odd = await listPages<{ holder: string }>(
      app,
      "/v1/regions/iad/claims?state=active&holder=odd&limit=1",
    );
    assert.deepEqual(odd.items.map((c) => c.holder), ["odd", "odd"]);
  });

  await t.step("a lease past its expiry, not yet swept, is no longer active", async () => {
    app.clock.advance(10_000);
    const page = await app.request("GET", "/v1/regions/iad/claims?state=active");
    assert.deepEqual(page.body.items.map((c: { id: string }) => c.id), soonestFirst.slice(1));
  });

  await t.step("its cursors and the unfiltered listing's are not each other's", async () => {
    const active = await app.request("GET", "/v1/regions/iad/claims?state=active&limit=1");
    const all = await app.request("GET", "/v1/regions/iad/claims?limit=1");
    const cursorOf = (page: { body: { cursor: string } }) => encodeURIComponent(page.body.cursor);
    assertProblem(
      await app.request("GET", `/v1/regions/iad/claims?cursor=${cursorOf(active)}`),
      400,
      "cursor",
    );
    assertProblem(
      await app.request("GET", `/v1/regions/iad/claims?state=active&cursor=${cursorOf(all)}`),
      400,
      "cursor",
    );
  });
});

Deno.test("an active claims page never lists a claim twice, nor waits behind leases run out", async (t) => {
  await t.step("a claim renewed between two reads of one page is listed once", async () => {
    await using app = await makeApp();
    await seedRegion(app, "iad", 4);
    const x = (await claim(app, "iad", { holder: "h", leaseMs: 10_000 })).body;
    await claim(app, "iad", { holder: "other", leaseMs: 20_000 });
    // x heartbeats once the page has read its record: the page's next read of the lease
    // index (the holder filter asks for more) finds it again, further on.
    let reads = 0;
    const kv = kvWith(app.kv, {
      getMany: async (...args) => {
        const read = await app.kv.getMany(...args);
        if (++reads === 1) {
          assert.equal((await renew(app, x.id, x.secret, { leaseMs: 60_000 })).status, 200);
        }
        return read;
      },
    });
    const page = await listClaims(kv, app.clock, "iad", { state: "active", holder: "h", limit: 2 });
    assert.deepEqual(page.items.map((c) => c.id), [x.id]);
  });

  await t.step("60 leases run out and not yet swept do not hide a live one", async () => {
    await using app = await makeApp();
    await seedRegion(app, "iad", 80);
    for (let i = 0; i < 60; i++) await claim(app, "iad", { holder: "crashed", leaseMs: 1_000 });
    app.clock.advance(2_000);
    const live = (await claim(app, "iad", { holder: "live", leaseMs: 60_000 })).body;
    const page = await app.request("GET", "/v1/regions/iad/claims?state=active&limit=5");
    assert.deepEqual(page.body.items.map((c: { id: string }) => c.id), [live.id]);
    assert.equal(page.body.cursor, null);
  });
});

async function revokeAs(t: TestApp, id: string, token: string, reason = "host maintenance") {
  return await t.request("POST", `/v1/claims/${id}/revoke`, { token, body: { reason } });
}

Deno.test("revoke ends a live lease with its reason, frees the slot, and only admins may", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  const held = await claim(app, "iad", { holder: "h", leaseMs: 60_000 });
  const { id, secret } = held.body;

  await t.step("clients and agents get 403 and nothing changes", async () => {
    const before = await snapshotKv(app.kv);
    for (const token of [TOKENS.client, TOKENS.agent, TOKENS.clientFra, TOKENS.agentFra]) {
      assertProblem(await revokeAs(app, id, token), 403);
    }
    assert.deepEqual(await snapshotKv(app.kv), before);
    assert.equal((await getClaim(app, id)).state, "active");
  });

  await t.step("an admin revokes: lost, with the reason, slot freed", async () => {
    const res = await revokeAs(app, id, TOKENS.admin);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.state, "lost");
    assert.match(res.body.reason, /host maintenance/);
    assertNoSecret(res.body, [secret]);
    const read = await getClaim(app, id);
    assert.equal(read.state, "lost");
    assert.match(read.reason, /host maintenance/);
    assert.notEqual(read.endedAt, null);
    assert.deepEqual(await poolOf(app, "iad"), { free: 1, claimed: 0, total: 1 });
  });

  await t.step("the holder gets 409 on renew and release", async () => {
    assertProblem(await renew(app, id, secret), 409);
    assertProblem(await release(app, id, secret), 409);
    assert.equal((await getClaim(app, id)).state, "lost");
  });

  await t.step("the slot goes to the next claim, with a larger fencing token", async () => {
    const next = await claim(app, "iad", { holder: "next" });
    assert.equal(next.status, 201);
    assert.ok(next.body.fencingToken > held.body.fencingToken);
  });

  await t.step("revoking again is 409; a missing reason is 422", async () => {
    assertProblem(await revokeAs(app, id, TOKENS.admin), 409);
    const noReason = await app.request("POST", `/v1/claims/${id}/revoke`, { body: {} });
    assertProblem(noReason, 422, "reason");
    const unknown = await revokeAs(app, "iad.01JD3J3ZK6S6M2P1TQ4Z3X9V7A", TOKENS.admin);
    assertProblem(unknown, 404);
  });
});

Deno.test("a lease past its expiry reads expired, ended at its expiry, before and after the sweep records it", async () => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  const granted = await claim(app, "iad", { holder: "h", leaseMs: 1000 });
  assert.equal(granted.status, 201);
  app.clock.advance(999);
  assert.equal((await getClaim(app, granted.body.id)).state, "active");
  app.clock.advance(4001); // 4 s past its expiry; the sweep has not run
  const before = await getClaim(app, granted.body.id);
  assert.deepEqual(
    [before.state, before.endedAt, before.reason],
    ["expired", granted.body.leaseExpiresAt, "lease expired"],
  );
  assert.equal(await sweepExpired(app.kv, app.clock, "iad"), 1);
  assert.deepEqual(await getClaim(app, granted.body.id), before, "the sweep records what was read");
});

Deno.test("revoking a lease already past its expiry answers 409 and records it expired", async () => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  const late = await claim(app, "iad", { holder: "late", leaseMs: 1000 });
  assert.equal(late.status, 201);
  app.clock.advance(1000); // expired; the sweep has not run yet
  assertProblem(await revokeAs(app, late.body.id, TOKENS.admin), 409);
  const read = await getClaim(app, late.body.id);
  assert.equal(read.state, "expired");
  assert.equal(read.reason, "lease expired");
  assert.deepEqual(await poolOf(app, "iad"), { free: 1, claimed: 0, total: 1 });
});

Deno.test("a page cursor works only on the listing it came from; any other is 400", async () => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 3);
  await seedRegion(app, "fra", 3);
  for (const region of ["iad", "fra", "iad", "fra"]) {
    assert.equal((await claim(app, region, { holder: "h" })).status, 201);
  }
  const first = await app.request("GET", "/v1/regions/iad/claims?limit=1");
  assert.equal(first.status, 200);
  const cursor = encodeURIComponent(first.body.cursor);
  const next = await app.request("GET", `/v1/regions/iad/claims?limit=1&cursor=${cursor}`);
  assert.equal(next.status, 200);
  assert.equal(next.body.items.length, 1);
  assert.notEqual(next.body.items[0].id, first.body.items[0].id);

  const resources = await app.request("GET", "/v1/regions/fra/resources?limit=1");
  const foreign = [
    `/v1/regions/fra/claims?cursor=${cursor}`, // another region's claims
    `/v1/regions/iad/resources?cursor=${cursor}`, // another listing of the region
    `/v1/regions/iad/resources?cursor=${encodeURIComponent(resources.body.cursor)}`,
    `/v1/regions/iad/claims?cursor=AAAA`, // a bare Deno KV cursor
    `/v1/regions/iad/claims?cursor=${cursor.split(".")[0]}.`, // this listing, no position
  ];
  for (const path of foreign) assertProblem(await app.request("GET", path), 400, "cursor");
});

Deno.test("a listing's last page has a null cursor, even when it is full", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 4);
  for (let i = 0; i < 4; i++) {
    assert.equal((await claim(app, "iad", { holder: i < 2 ? "even" : "odd" })).status, 201);
  }
  /** Every page of `path` at `limit`: each page's size and whether it has a cursor. */
  async function pages(path: string, limit: number) {
    const seen: Array<[number, boolean]> = [];
    let cursor: string | null = null;
    do {
      const after: string = cursor === null ? "" : `&cursor=${encodeURIComponent(cursor)}`;
      const page = await app.request(
        "GET",
        `${path}${path.includes("?") ? "&" : "?"}limit=${limit}${after}`,
      );
      assert.equal(page.status, 200, JSON.stringify(page.body));
      cursor = page.body.cursor;
      seen.push([page.body.items.length, cursor !== null]);
    } while (cursor !== null);
    return seen;
  }
  await t.step("resources and regions", async () => {
    assert.deepEqual(await pages("/v1/regions/iad/resources", 2), [[2, true], [2, false]]);
    assert.deepEqual(await pages("/v1/regions/iad/resources", 4), [[4, false]]);
    assert.deepEqual(await pages("/v1/regions/iad/resources", 3), [[3, true], [1, false]]);
    assert.deepEqual(await pages("/v1/regions", 1), [[1, false]]);
  });
  await t.step("claims, filtered or not", async () => {
    assert.deepEqual(await pages("/v1/regions/iad/claims", 2), [[2, true], [2, false]]);
    assert.deepEqual(await pages("/v1/regions/iad/claims", 4), [[4, false]]);
    assert.deepEqual(await pages("/v1/regions/iad/claims?holder=odd", 2), [[2, false]]);
    assert.deepEqual(await pages("/v1/regions/iad/claims?holder=nobody", 1), [[0, false]]);
  });
  await t.step("claims past a page's scan budget (10 × limit)", async () => {
    await seedRegion(app, "fra", 12);
    for (let i = 0; i < 12; i++) {
      assert.equal((await claim(app, "fra", { holder: "h" })).status, 201);
    }
    assert.deepEqual(await pages("/v1/regions/fra/claims?holder=nobody", 1), [[0, true], [
      0,
      false,
    ]]);
    assert.deepEqual(await pages("/v1/regions/fra/claims?holder=nobody", 2), [[0, false]]);
  });
});

Deno.test("a claim that finds no free slot sweeps 100 overdue leases; while more are overdue it answers 503 with Retry-After 1, and each retry sweeps on", async () => {
  await using app = await makeApp();
  // 250 leases of another label fall due first: more than two catch-up sweeps' worth.
  await seedRegion(app, "iad", 25, { slots: 10, labels: { k: "y" }, prefix: "y" });
  await app.request("PUT", "/v1/regions/iad/resources/x-0", { body: { labels: { k: "x" } } });
  for (let i = 0; i < 250; i++) {
    assert.equal(
      (await claim(app, "iad", { holder: "h", leaseMs: 1000, labels: { k: "y" } })).status,
      201,
    );
  }
  app.clock.advance(1);
  const first = await claim(app, "iad", { holder: "h", leaseMs: 1000, labels: { k: "x" } });
  assert.equal(first.status, 201);
  app.clock.advance(5000); // every lease is overdue, and no sweep tick has been delivered
  const answers = [];
  for (let attempt = 0; attempt < 3; attempt++) {
    const res = await claim(app, "iad", { holder: "z", labels: { k: "x" } });
    answers.push([res.status, res.headers.get("retry-after")]);
  }
  // Leases 1-100, 101-200, then 201-251, the last of them x-0's.
  assert.deepEqual(answers, [[503, "1"], [503, "1"], [201, null]]);
  assert.equal((await getClaim(app, first.body.id)).state, "expired");
});
