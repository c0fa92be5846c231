import assert from "node:assert/strict";
import { allocateAlone, createClaim, type PreparedClaim } from "../lib/allocate.ts";
import { routeClaim } from "../lib/fallback.ts";
import { GroupCommitter } from "../lib/group.ts";
import { keys } from "../lib/keys.ts";
import {
  assertProblem,
  claim,
  getClaim,
  kvWith,
  makeApp,
  poolOf,
  release,
  renew,
  seedRegion,
  snapshotKv,
  TOKENS,
} from "./_helpers.ts";

const key = (k: string) => ({ "idempotency-key": k });

Deno.test("an Idempotency-Key replays the first claim and consumes one slot", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 4);
  const body = { holder: "worker-1", leaseMs: 30_000, labels: {} };
  const first = await claim(app, "iad", body, key("job-42"));
  assert.equal(first.status, 201, JSON.stringify(first.body));
  assert.equal(first.headers.get("idempotent-replayed"), null);

  await t.step("same key, same body: the same claim and secret, replayed", async () => {
    // Key order in the body does not matter: it is the same request.
    const again = await claim(
      app,
      "iad",
      { labels: {}, leaseMs: 30_000, holder: "worker-1" },
      key("job-42"),
    );
    assert.equal(again.status, 201);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.equal(again.body.id, first.body.id);
    assert.equal(again.body.secret, first.body.secret);
    assert.equal(again.body.fencingToken, first.body.fencingToken);
    assert.equal(again.body.resource, first.body.resource);
    assert.equal(again.body.slot, first.body.slot);
    assert.deepEqual(await poolOf(app, "iad"), { free: 3, claimed: 1, total: 4 });
  });

  await t.step("the replayed secret works", async () => {
    const replay = await claim(app, "iad", body, key("job-42"));
    assert.equal((await release(app, replay.body.id, replay.body.secret)).status, 204);
    assert.equal((await getClaim(app, first.body.id)).state, "released");
    assert.deepEqual(await poolOf(app, "iad"), { free: 4, claimed: 0, total: 4 });
  });

  await t.step(
    "same key, different body: 422 naming Idempotency-Key, nothing changes",
    async () => {
      const before = await snapshotKv(app.kv);
      const other = await claim(app, "iad", { ...body, holder: "worker-2" }, key("job-42"));
      assertProblem(other, 422, "Idempotency-Key");
      const longer = await claim(app, "iad", { ...body, leaseMs: 30_001 }, key("job-42"));
      assertProblem(longer, 422, "Idempotency-Key");
      assert.deepEqual(await snapshotKv(app.kv), before);
    },
  );

  await t.step("another key is another claim", async () => {
    const next = await claim(app, "iad", body, key("job-43"));
    assert.equal(next.status, 201);
    assert.notEqual(next.body.id, first.body.id);
    assert.equal(next.headers.get("idempotent-replayed"), null);
  });
});

Deno.test("a replay says, in Allot-Claim-State, what became of the claim since", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 3);
  const body = { holder: "worker-1", leaseMs: 10_000 };
  const replayed = async (k: string) => {
    const again = await claim(app, "iad", body, key(k));
    assert.equal(again.status, 201);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.equal(again.body.state, "active", "the body is the first answer, as it was");
    return again.headers.get("allot-claim-state");
  };
  const first = async (k: string) => (await claim(app, "iad", body, key(k))).body;

  await t.step(
    "a first answer has no state header; a live claim's replay says active",
    async () => {
      const res = await claim(app, "iad", body, key("live"));
      assert.equal(res.headers.get("allot-claim-state"), null);
      assert.equal(await replayed("live"), "active");
    },
  );

  await t.step("released", async () => {
    const granted = await first("freed");
    assert.equal((await release(app, granted.id, granted.secret)).status, 204);
    assert.equal(await replayed("freed"), "released");
  });

  await t.step("revoked: lost, while the slot may be someone else's", async () => {
    const granted = await first("revoked");
    const res = await app.request("POST", `/v1/claims/${granted.id}/revoke`, {
      body: { reason: "maintenance" },
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(await replayed("revoked"), "lost");
  });

  await t.step("run out, even before the sweep records it", async () => {
    app.clock.advance(10_000);
    assert.equal(await replayed("live"), "expired");
  });

  await t.step("ended, once the claim's record has expired before its key", async () => {
    const id = (await claim(app, "iad", body, key("freed"))).body.id;
    await app.kv.delete(keys.claim("iad", id)); // as its retention's end does
    assert.equal(await replayed("freed"), "ended");
  });
});

Deno.test("20 concurrent duplicates with one Idempotency-Key make exactly one claim", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 50);
  const answers = await Promise.all(
    Array.from({ length: 20 }, () => claim(t, "iad", { holder: "h" }, key("burst"))),
  );
  for (const res of answers) assert.equal(res.status, 201, JSON.stringify(res.body));
  assert.equal(new Set(answers.map((r) => r.body.id)).size, 1);
  assert.equal(new Set(answers.map((r) => r.body.secret)).size, 1);
  const originals = answers.filter((r) => r.headers.get("idempotent-replayed") === null);
  assert.equal(originals.length, 1, "exactly one answer is the original");
  assert.deepEqual(await poolOf(t, "iad"), { free: 49, claimed: 1, total: 50 });
  const active = await t.request("GET", "/v1/regions/iad/claims?state=active", {
    token: TOKENS.admin,
  });
  assert.equal(active.body.items.length, 1);
});

Deno.test("concurrent duplicates for the last free slot all get the one claim", async () => {
  // A duplicate that finds the pool empty (the original took the last slot) must replay
  // the original claim, not answer 503.
  await using t = await makeApp();
  await seedRegion(t, "iad", 1);
  const answers = await Promise.all(
    Array.from({ length: 20 }, () => claim(t, "iad", { holder: "h" }, key("last"))),
  );
  for (const res of answers) assert.equal(res.status, 201, JSON.stringify(res.body));
  assert.equal(new Set(answers.map((r) => r.body.id)).size, 1);
  assert.deepEqual(await poolOf(t, "iad"), { free: 0, claimed: 1, total: 1 });
});

Deno.test("a retry sent while its first request is still allocating waits for it, then replays", async () => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  // The first request's allocation is held (as one that found its slot only after a sweep);
  // the retry must not allocate meanwhile: it could find neither the slot nor the claim.
  const held = Promise.withResolvers<void>();
  let allocations = 0;
  const allocator = {
    async allocate(claim: PreparedClaim) {
      allocations++;
      await held.promise;
      return await allocateAlone(
        app.kv,
        app.clock,
        claim,
        await routeClaim(app.kv, app.clock, "iad"),
      );
    },
  };
  const request = {
    region: "iad",
    caller: "caller-1",
    input: { holder: "worker-1" },
    idempotencyKey: "job-1",
  };
  const first = createClaim(app.kv, app.clock, request, allocator);
  const retry = createClaim(app.kv, app.clock, request, allocator);
  while (allocations === 0) await new Promise((resolve) => setTimeout(resolve, 0));
  for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(allocations, 1, "the retry did not allocate beside its first request");
  held.resolve();
  const [a, b] = await Promise.all([first, retry]);
  assert.deepEqual([a.replayed, b.replayed], [false, true]);
  assert.equal(b.grant.id, a.grant.id);
  assert.equal(allocations, 1);
});

Deno.test("Idempotency-Keys of different callers are independent", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 3);
  const body = { holder: "h" };
  const mine = await claim(t, "iad", body, key("shared"));
  const theirs = await t.request("POST", "/v1/regions/iad/claims", {
    token: TOKENS.client2,
    body,
    headers: key("shared"),
  });
  assert.equal(mine.status, 201);
  assert.equal(theirs.status, 201);
  assert.equal(theirs.headers.get("idempotent-replayed"), null);
  assert.notEqual(theirs.body.id, mine.body.id);
  assert.notEqual(theirs.body.secret, mine.body.secret);
  // Each caller's retry replays its own claim.
  const theirRetry = await t.request("POST", "/v1/regions/iad/claims", {
    token: TOKENS.client2,
    body,
    headers: key("shared"),
  });
  assert.equal(theirRetry.body.id, theirs.body.id);
  assert.equal((await claim(t, "iad", body, key("shared"))).body.id, mine.body.id);
  // A different body under the same key is refused for one caller only.
  const clash = await t.request("POST", "/v1/regions/iad/claims", {
    token: TOKENS.client2,
    body: { holder: "other" },
    headers: key("shared"),
  });
  assertProblem(clash, 422, "Idempotency-Key");
  assert.deepEqual(await poolOf(t, "iad"), { free: 1, claimed: 2, total: 3 });
});

/** Wraps `inner` so every idempotency record an atomic writes is recorded with its expireIn. */
function recordKeyWrites(inner: Deno.Kv) {
  const writes: Array<{ key: Deno.KvKey; expireIn: number | undefined }> = [];
  const kv = new Proxy(inner, {
    get(target, prop) {
      if (prop === "atomic") {
        return () => {
          const op = target.atomic();
          const set = op.set.bind(op);
          op.set = (key, value, options) => {
            if (key[2] === "idem") writes.push({ key, expireIn: options?.expireIn });
            return set(key, value, options);
          };
          return op;
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { kv, writes };
}

Deno.test("an Idempotency-Key is remembered as long as its lease, renewed for days", async (t) => {
  await using raw = await makeApp();
  const { kv, writes } = recordKeyWrites(raw.kv);
  await using app = await makeApp({ kv, clock: raw.clock });
  const hour = 3_600_000;
  const day = 24 * hour;
  await seedRegion(app, "iad", 2, { config: { lease: { defaultMs: hour, maxMs: hour } } });
  const body = { holder: "long-job" };
  const first = await claim(app, "iad", body, key("job-days"));
  assert.equal(first.status, 201);
  assert.deepEqual(writes.map((w) => w.expireIn), [hour + day], "the key outlives the lease a day");
  const claimKey = ["r", "iad", "claim", first.body.id];
  const keyExpiry = async () =>
    (await raw.kv.get<{ idempotency?: { expiresAt: number } }>(claimKey)).value?.idempotency
      ?.expiresAt;
  const started = app.clock.now();
  assert.equal(await keyExpiry(), started + hour + day);

  await t.step("renewals within the key's life leave it alone, on the group path", async () => {
    for (let i = 0; i < 27; i++) {
      app.clock.advance(50 * 60_000);
      assert.equal((await renew(app, first.body.id, first.body.secret)).status, 200);
    }
    assert.equal(writes.length, 1);
    const stats = await app.request("GET", "/v1/stats");
    assert.equal(stats.body.renews.alone, 0);
  });

  await t.step(
    "the renew that carries the lease within an hour of the key's expiry writes it again",
    async () => {
      app.clock.advance(50 * 60_000); // 23 h 20 min in: the lease would end 40 min before the key
      const renewed = await renew(app, first.body.id, first.body.secret);
      assert.equal(renewed.status, 200);
      assert.equal(writes.length, 2);
      assert.equal(writes[1].expireIn, hour + day, "a day after the renewed lease");
      assert.equal(await keyExpiry(), app.clock.now() + hour + day);
      assert.equal(renewed.body.fencingToken, first.body.fencingToken);
      const stats = await app.request("GET", "/v1/stats");
      assert.equal(stats.body.renews.alone, 1, "that renew read the key on the lone path");
    },
  );

  await t.step(
    "a retry with the key still replays the first answer, tokens and secret included",
    async () => {
      const again = await claim(app, "iad", body, key("job-days"));
      assert.equal(again.status, 201);
      assert.equal(again.headers.get("idempotent-replayed"), "true");
      for (const field of ["id", "secret", "fencingToken", "consistencyToken", "slot"]) {
        assert.equal(again.body[field], first.body[field], field);
      }
      assert.deepEqual(await poolOf(app, "iad"), { free: 1, claimed: 1, total: 2 });
    },
  );

  await t.step("a key record already gone is forgotten; the renew still succeeds", async () => {
    await raw.kv.delete(writes[1].key);
    for (let i = 0; i < 28; i++) {
      app.clock.advance(50 * 60_000);
      assert.equal((await renew(app, first.body.id, first.body.secret)).status, 200);
    }
    assert.equal(await keyExpiry(), undefined, "the claim no longer names a key");
    assert.equal(writes.length, 2, "nothing left to write again");
  });
});

Deno.test("a retry queued behind its own first commit replays, and the claims grouped with it still share a commit", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 20);
  const committer = new GroupCommitter(app.kv, app.clock);
  const prepared = (holder: string, idempotencyKey?: string): PreparedClaim => ({
    request: { region: "iad", caller: "c1", input: { holder }, idempotencyKey },
    bodyHash: `hash-of-${holder}`,
    idemKey: idempotencyKey ? keys.idempotency("iad", "c1", idempotencyKey) : null,
  });
  // The first commits at once (an idle isolate); its retry passed the route's check before
  // that commit, so it is queued with ten other claims for the next group.
  const first = committer.allocate(prepared("a", "job-1"));
  const retry = committer.allocate(prepared("a", "job-1"));
  const changed = committer.allocate(prepared("b", "job-1"));
  const others = Array.from({ length: 10 }, (_, i) => committer.allocate(prepared(`o${i}`)));
  const [a, again, ...rest] = await Promise.allSettled([first, retry, changed, ...others]);

  await t.step("the retry replays the first grant; a changed body is 422", () => {
    assert.equal(a.status, "fulfilled");
    assert.equal(again.status, "fulfilled");
    if (a.status !== "fulfilled" || again.status !== "fulfilled") return;
    assert.equal(again.value.replayed, true);
    assert.equal(again.value.grant.id, a.value.grant.id);
    assert.equal(again.value.grant.fencingToken, a.value.grant.fencingToken);
    assert.equal(rest[0].status, "rejected");
  });
  await t.step("the others commit together: no failed group, no lone retries", () => {
    const grants = rest.slice(1);
    assert.ok(grants.every((g) => g.status === "fulfilled" && g.value.groupSize === 10));
    assert.equal(committer.stats.failedGroups, 0);
    assert.equal(committer.stats.alone, 0);
    assert.equal(committer.stats.commits, 2);
  });
});

Deno.test("a group whose idempotency re-read fails while it routes answers its claims alone", async () => {
  const inner = await Deno.openKv(":memory:");
  let armed = false;
  let gate = Promise.resolve();
  let open = () => {};
  const kv = kvWith(inner, {
    getMany: async (keyList, options) => {
      // The group's re-read (idempotency keys only), not the route's first read (which
      // reads the key with the region's configuration).
      if (armed && keyList.every((key) => key[2] === "idem")) {
        armed = false;
        open();
        throw new TypeError("a transient KV read failure");
      }
      // The group's routing reads finish only after that failure, which must then not go
      // unheard (an unhandled rejection ends the process).
      if (!keyList.some((key) => key[2] === "idem")) {
        await gate.then(() => new Promise((resolve) => setTimeout(resolve, 0)));
      }
      return inner.getMany(keyList, options);
    },
  });
  await using app = await makeApp({ kv });
  await seedRegion(app, "iad", 2);
  gate = new Promise((resolve) => open = resolve);
  armed = true;
  const res = await claim(app, "iad", { holder: "h" }, key("job-7"));
  assert.equal(armed, false, "the re-read failed");
  assert.equal(res.status, 201, JSON.stringify(res.body));
  const stats = (await app.request("GET", "/v1/stats")).body;
  assert.equal(stats.claims.alone, 1, "answered by the lone path");
  inner.close();
});
