import assert from "node:assert/strict";
import { renewAlone, type RenewJob } from "../lib/claims.ts";
import { NotFoundError } from "../lib/errors.ts";
import { keys } from "../lib/keys.ts";
import type { ClaimRecord } from "../lib/leases.ts";
import type { ResourceSpec } from "../lib/pool.ts";
import { GroupRenewer } from "../lib/renewer.ts";
import { CHAIN_LOST_MS } from "../lib/sweeper.ts";
import {
  assertProblem,
  claim,
  getClaim,
  interceptCommits,
  kvWith,
  makeApp,
  poolOf,
  recordEnqueues,
  release,
  renew,
  seedRegion,
  type TestApp,
  TOKENS,
} from "./_helpers.ts";

const iso = (ms: number) => new Date(ms).toISOString();

/** `count` claims granted in `region`, as their response bodies. */
async function grantMany(t: TestApp, region: string, count: number) {
  const grants = await Promise.all(
    Array.from({ length: count }, (_, i) => claim(t, region, { holder: `h${i}` })),
  );
  assert.ok(grants.every((g) => g.status === 201), "every claim is granted");
  return grants.map((g) => g.body);
}

/** The region's expiry index as claim id → expiry. */
async function expiryIndex(t: TestApp, region: string): Promise<Map<string, number>> {
  const index = new Map<string, number>();
  for await (const entry of t.kv.list({ prefix: keys.leases(region) })) {
    const [expiresAt, claimId] = entry.key.slice(-2) as [number, string];
    assert.ok(!index.has(claimId), `claim ${claimId} is in the expiry index twice`);
    index.set(claimId, expiresAt);
  }
  return index;
}

async function renewStats(t: TestApp) {
  const res = await t.request("GET", "/v1/stats");
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.renews as { commits: number; renewed: number; alone: number };
}

Deno.test("40 concurrent renews share commits, each gets its own lease, and the expiry index follows", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 40, { config: { lease: { defaultMs: 10_000, maxMs: 60_000 } } });
  const grants = await grantMany(t, "iad", 40);
  t.clock.advance(3000);
  const now = t.clock.now();
  const asked = grants.map((_, i) => (i % 2 === 0 ? 20_000 + i : 90_000)); // odd ones clamped
  const renewed = await Promise.all(
    grants.map((g, i) => renew(t, g.id, g.secret, { leaseMs: asked[i] })),
  );
  const index = await expiryIndex(t, "iad");
  assert.equal(index.size, 40, "one expiry entry per live lease, the old ones gone");
  renewed.forEach((res, i) => {
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const leaseMs = Math.min(asked[i], 60_000);
    assert.equal(res.body.leaseMs, leaseMs);
    assert.equal(res.body.leaseExpiresAt, iso(now + leaseMs));
    assert.equal(res.body.fencingToken, grants[i].fencingToken, "a renew keeps the token");
    assert.equal(res.headers.get("allot-consistency-token"), res.body.consistencyToken);
    assert.equal(index.get(grants[i].id), now + leaseMs);
  });
  for (const [i, g] of grants.entries()) {
    assert.equal((await getClaim(t, g.id)).leaseExpiresAt, iso(now + Math.min(asked[i], 60_000)));
  }
  const stats = await renewStats(t);
  assert.equal(stats.renewed, 40);
  assert.equal(stats.alone, 0);
  assert.ok(stats.commits < 40, `${stats.commits} commits for 40 renews: renews share commits`);
  const tokens = new Set(renewed.map((r) => r.body.consistencyToken));
  assert.ok(tokens.size < 40, "renews in one commit share its versionstamp");
  // The region's write mark moved with the last renew commit (read-your-writes relies on it).
  const mark = await t.kv.get(keys.writeMark("iad"));
  assert.equal(mark.versionstamp, [...tokens].sort().at(-1));
});

Deno.test("in a group of renews, each refusal is its caller's alone", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 30);
  await seedRegion(app, "fra", 2);
  const grants = await grantMany(app, "iad", 30);
  const [ended, badSecret, ...good] = grants;
  assert.equal((await release(app, ended.id, ended.secret)).status, 204);
  const fra = (await claim(app, "fra", { holder: "f" })).body;
  const answers = await Promise.all([
    ...good.map((g) => renew(app, g.id, g.secret)),
    renew(app, ended.id, ended.secret),
    renew(app, badSecret.id, good[0].secret),
    renew(app, badSecret.id, null),
    renew(app, "iad.01JD3J3ZK6S6M2P1TQ4Z3X9V7A", "x"),
    renew(app, "not-a-claim-id", "x"),
    app.request("POST", `/v1/claims/${fra.id}/renew`, {
      token: TOKENS.client2, // not the caller that claimed it
      body: {},
      headers: { "allot-claim-secret": fra.secret },
    }),
    app.request("POST", `/v1/claims/${grants[2].id}/renew`, {
      token: TOKENS.clientFra,
      body: {},
      headers: { "allot-claim-secret": grants[2].secret },
    }),
  ]);
  const [endedAnswer, wrongSecret, noSecret, unknown, malformed, otherCaller, outOfScope] = answers
    .slice(good.length);
  await t.step("the good renews all succeed", () => {
    for (const res of answers.slice(0, good.length)) {
      assert.equal(res.status, 200, JSON.stringify(res.body));
    }
    assert.equal(otherCaller.status, 200, "the secret, not the caller, opens a claim");
  });
  await t.step("each refusal has its own status", () => {
    assertProblem(endedAnswer, 409);
    assertProblem(wrongSecret, 403);
    assertProblem(noSecret, 403);
    assertProblem(unknown, 404);
    assertProblem(malformed, 404);
    assertProblem(outOfScope, 403);
  });
  await t.step("refusals are settled in the group, not retried alone", async () => {
    const stats = await renewStats(app);
    assert.equal(stats.alone, 0);
    assert.equal(stats.renewed, good.length + 1);
    assert.ok(stats.commits < good.length, `${stats.commits} commits: renews shared them`);
  });
  await t.step("a refused renew changed nothing", async () => {
    const read = await getClaim(app, badSecret.id);
    assert.equal(read.leaseExpiresAt, badSecret.leaseExpiresAt);
    assert.equal((await getClaim(app, ended.id)).state, "released");
    assert.deepEqual(await poolOf(app, "iad"), { free: 1, claimed: 29, total: 30 });
  });
});

Deno.test("a renew past expiry or on a gone resource gets 409 from the lone path; the rest of its group renews", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 12, { config: { lease: { defaultMs: 10_000, maxMs: 60_000 } } });
  const grants = await grantMany(t, "iad", 10);
  const short = (await claim(t, "iad", { holder: "short", leaseMs: 1000 })).body;
  const doomed = (await claim(t, "iad", { holder: "doomed" })).body;
  // The spec turns gone without its leases being ended yet (a status update racing the renew).
  const specKey = keys.resource("iad", doomed.resource);
  const spec = await t.kv.get<ResourceSpec>(specKey);
  await t.kv.set(specKey, { ...spec.value!, state: "gone" });
  t.clock.advance(2000);
  const answers = await Promise.all([
    ...grants.map((g) => renew(t, g.id, g.secret)),
    renew(t, short.id, short.secret),
    renew(t, doomed.id, doomed.secret),
  ]);
  answers.slice(0, 10).forEach((res) => assert.equal(res.status, 200, JSON.stringify(res.body)));
  const [expired, lost] = answers.slice(10);
  assertProblem(expired, 409);
  assert.match(expired.body.detail, /expired/);
  assertProblem(lost, 409);
  assert.match(lost.body.detail, /gone/);
  assert.equal((await getClaim(t, short.id)).state, "expired");
  assert.equal((await getClaim(t, doomed.id)).state, "lost");
  const index = await expiryIndex(t, "iad");
  assert.equal(index.size, 10, "the two ended leases left the expiry index");
  const stats = await renewStats(t);
  assert.equal(stats.renewed, 10);
  assert.equal(stats.alone, 2);
});

/** A KV handle that runs `then` (once) when a get or getMany asks for a key `matches` picks. */
function onRead(inner: Deno.Kv, matches: (key: Deno.KvKey) => boolean, then: () => void) {
  let armed = true;
  const fire = (list: Deno.KvKey[]) => {
    if (armed && list.some(matches)) {
      armed = false;
      then();
    }
  };
  return kvWith(inner, {
    getMany: (list, options) => {
      fire([...list]);
      return inner.getMany(list, options);
    },
    get: (key, options) => {
      fire([key]);
      return inner.get(key, options);
    },
  });
}

Deno.test("a lease that runs out while its renew reads is refused, not revived", async (t) => {
  const reads = {
    "the region's config": (key: Deno.KvKey) => key[0] === "regions",
    "its Idempotency-Key, to write it again": (key: Deno.KvKey) => key[2] === "idem",
  };
  for (const [read, matches] of Object.entries(reads)) {
    for (const path of ["grouped", "alone"] as const) {
      await t.step(`${path}, during ${read}`, async () => {
        await using app = await makeApp();
        const lease = { defaultMs: 60_000, maxMs: 7 * 86_400_000 };
        await seedRegion(app, "iad", 1, { config: { lease } });
        const g = (await claim(app, "iad", { holder: "h", leaseMs: 1000 }, {
          "idempotency-key": "k",
        })).body;
        let fired = false;
        const kv = onRead(app.kv, matches, () => {
          fired = true;
          app.clock.advance(1000);
        });
        // Two days: near enough the key's expiry that the renew writes the key again.
        const job: RenewJob = { guard: () => {}, leaseMs: 2 * 86_400_000 };
        const renewing = path === "grouped"
          ? new GroupRenewer(kv, app.clock).renew(g.id, job)
          : renewAlone(kv, app.clock, g.id, job);
        await assert.rejects(renewing, /expired/);
        assert.ok(fired, "the lease ran out during that read");
        const after = await getClaim(app, g.id);
        assert.deepEqual([after.state, after.endedAt], ["expired", iso(app.clock.now())]);
      });
    }
  }
});

Deno.test("a renew group that loses a race is retried renew by renew, and every caller is answered", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 20);
  const grants = await grantMany(t, "iad", 20);
  const { kv, arm, fired } = interceptCommits(t.kv);
  const renewer = new GroupRenewer(kv, t.clock);
  const job: RenewJob = { guard: () => {}, leaseMs: 30_000 };
  // Between the group's reads and its commit, another isolate renews one of its claims.
  arm(() => renewAlone(t.kv, t.clock, grants[7].id, { ...job, leaseMs: 45_000 }));
  t.clock.advance(500);
  // A malformed id first: refused without a commit, it leaves the 20 renews one group.
  const malformed = assert.rejects(renewer.renew("not-a-claim-id", job), NotFoundError);
  const outcomes = await Promise.all(grants.map((g) => renewer.renew(g.id, job)));
  await malformed;
  assert.ok(fired(), "the race ran before the group's commit");
  assert.deepEqual(renewer.stats, { commits: 0, renewed: 0, alone: 20 });
  for (const [i, outcome] of outcomes.entries()) {
    assert.equal(outcome.claim.id, grants[i].id);
    assert.equal(outcome.claim.leaseExpiresAt, iso(t.clock.now() + 30_000));
    const stored = await t.kv.get<ClaimRecord>(keys.claim("iad", grants[i].id));
    assert.equal(stored.value!.expiresAt, t.clock.now() + 30_000);
  }
  const index = await expiryIndex(t, "iad");
  assert.equal(index.size, 20);
  for (const g of grants) assert.equal(index.get(g.id), t.clock.now() + 30_000);
});

Deno.test("two renews of one claim never share a group: each moves the expiry entry the other left", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 2, { config: { lease: { defaultMs: 10_000, maxMs: 60_000 } } });
  const [other, twice] = await grantMany(t, "iad", 2);
  const renewer = new GroupRenewer(t.kv, t.clock);
  const now = t.clock.now();
  const guard = () => {};
  // The first renew commits alone (an idle queue); the two of `twice` then queue together.
  const answers = await Promise.all([
    renewer.renew(other.id, { guard }),
    renewer.renew(twice.id, { guard, leaseMs: 20_000 }),
    renewer.renew(twice.id, { guard, leaseMs: 30_000 }),
  ]);
  assert.deepEqual(answers.map((a) => a.claim.leaseExpiresAt), [
    iso(now + 10_000),
    iso(now + 20_000),
    iso(now + 30_000),
  ]);
  assert.deepEqual(renewer.stats, { commits: 3, renewed: 3, alone: 0 });
  const index = await expiryIndex(t, "iad");
  assert.deepEqual(
    [...index.entries()].sort(),
    [
      [other.id, now + 10_000],
      [twice.id, now + 30_000],
    ].sort(),
  );
});

Deno.test("a renew group that starts the region's sweep chain times it for its soonest expiry", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 2, { config: { lease: { defaultMs: 60_000, maxMs: 60_000 } } });
  const [first, second] = await grantMany(t, "iad", 2);
  // The chain the claims started has not beaten for longer than CHAIN_LOST_MS: presumed lost.
  t.clock.advance(CHAIN_LOST_MS + 1);
  const recording = recordEnqueues(t.kv);
  const renewer = new GroupRenewer(recording.kv, t.clock);
  const guard = () => {};
  // A malformed id first: refused without a commit, it leaves both renews one group.
  const malformed = assert.rejects(renewer.renew("not-a-claim-id", { guard }), NotFoundError);
  await Promise.all([
    renewer.renew(first.id, { guard, leaseMs: 800 }),
    renewer.renew(second.id, { guard, leaseMs: 300 }),
  ]);
  await malformed;
  assert.deepEqual(renewer.stats, { commits: 1, renewed: 2, alone: 0 });
  assert.equal(recording.enqueued.length, 1, "one new chain for the region");
  assert.deepEqual(
    { ...(recording.enqueued[0] as Record<string, unknown>), chain: "any" },
    { type: "lease.sweep", region: "iad", chain: "any", tick: 0 },
  );
  assert.equal(recording.delays[0], 300, "due when the sooner of the two leases expires");
});

Deno.test("a burst of 150 renews is split at Deno KV's 100-check limit, never failed by it", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 150);
  const grants = await grantMany(t, "iad", 150);
  const answers = await Promise.all(grants.map((g) => renew(t, g.id, g.secret)));
  assert.ok(answers.every((res) => res.status === 200));
  const stats = await renewStats(t);
  assert.equal(stats.renewed, 150);
  assert.equal(stats.alone, 0, "no group was too large to commit");
  // The first renew finds the queue idle and commits alone; 149 more need two commits or more.
  assert.ok(stats.commits >= 3, `${stats.commits} commits`);
  assert.ok(stats.commits <= 10, `${stats.commits} commits: groups this small test no limit`);
});
