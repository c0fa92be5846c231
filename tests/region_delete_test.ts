/**
 * DELETE /v1/regions/{region}: an unused region goes, whatever races it; one still in use
 * is refused with 409 naming what is left, and nothing changes.
 */
import assert from "node:assert/strict";
import { StatusApplier } from "../lib/applier.ts";
import { keys } from "../lib/keys.ts";
import { handleQueueMessage, type StatusBatchMessage } from "../lib/queue.ts";
import { evaluateEveryRegion, takeWatch, watchRegions } from "../lib/region_watch.ts";
import { deleteRegion as removeRegion } from "../lib/regions.ts";
import { finishLeaseLosses } from "../lib/resources.ts";
import { ingestStatus } from "../lib/status.ts";
import { seededRandom } from "../lib/random.ts";
import type { StatusUpdate } from "../lib/schemas.ts";
import { readSweeper } from "../lib/sweeper.ts";
import { gaugedRegions, observeRegion } from "../lib/telemetry.ts";
import {
  assertProblem,
  claim,
  getClaim,
  kvWith,
  leaseQueueDeps,
  loseCommitAnswers,
  makeApp,
  racingApps,
  recordEnqueues,
  release,
  seedRegion,
  snapshotKv,
  type TestApp,
  type TestResponse,
  TOKENS,
} from "./_helpers.ts";

const deleteRegion = (t: TestApp, region: string, token: string = TOKENS.admin) =>
  t.request("DELETE", `/v1/regions/${region}`, { token });

/** The kinds of key (["r", region, kind, ...]) stored under a region's prefix. */
async function kindsUnder(kv: Deno.Kv, region: string): Promise<string[]> {
  const kinds = new Set<string>();
  for await (const entry of kv.list({ prefix: ["r", region] })) kinds.add(String(entry.key[2]));
  return [...kinds].sort();
}

/** Asserts a deletion's 409 whose detail mentions `what`. */
function assertInUse(res: TestResponse, region: string, what: string, why = ""): void {
  assertProblem(res, 409);
  assert.equal(res.body.type, "urn:allot:problem:in-use");
  assert.match(res.body.detail, new RegExp(`^Cannot delete region "${region}": .*${what}`), why);
}

/** Asserts that deleting `region` is refused with a 409 naming `what`, and changes nothing. */
async function assertRefused(t: TestApp, region: string, what: string, why = ""): Promise<void> {
  const before = await snapshotKv(t.kv);
  assertInUse(await deleteRegion(t, region), region, what, why);
  assert.deepEqual(await snapshotKv(t.kv), before, "a refused deletion changes nothing");
}

Deno.test("DELETE /v1/regions/{region}: an unused region goes, and comes back afresh under its name", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 2, { config: { lag: { enterMs: 1000, exitMs: 100 } } });
  const granted = (await claim(t, "iad", { holder: "a", leaseMs: 5_000 })).body;
  assert.equal((await release(t, granted.id, granted.secret)).status, 204);
  for (const id of ["res-0000", "res-0001"]) {
    assert.equal((await t.request("DELETE", `/v1/regions/iad/resources/${id}`)).status, 200);
  }

  const res = await deleteRegion(t, "iad");
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.match(res.body.consistencyToken, /^[0-9a-f]{20}$/);
  assert.equal(res.headers.get("allot-consistency-token"), res.body.consistencyToken);
  assertProblem(await t.request("GET", "/v1/regions/iad"), 404);
  assert.deepEqual((await t.request("GET", "/v1/regions")).body.items, []);
  assertProblem(await deleteRegion(t, "iad"), 404);
  assertProblem(await claim(t, "iad"), 404);
  // SPEC: an ended claim stays readable for an hour; tombstones keep old status reports out.
  assert.equal((await getClaim(t, granted.id)).state, "released");
  assert.deepEqual(await kindsUnder(t.kv, "iad"), ["claim", "rv", "tel"]);

  const again = await t.request("PUT", "/v1/regions/iad", { body: {} });
  assert.equal(again.status, 201);
  const view = (await t.request("GET", "/v1/regions/iad")).body;
  assert.deepEqual(
    { ...view, updatedAt: null, modeSince: null },
    {
      name: "iad",
      backup: null,
      lag: { enterMs: 2000, exitMs: 500 },
      lease: { defaultMs: 60_000, maxMs: 3_600_000 },
      updatedAt: null,
      mode: "primary",
      modeSince: null,
      modeReason: view.modeReason,
      modeHistory: [],
      lagMs: 0,
      pending: 0,
      deadLettered: 0,
      total: 0,
      free: 0,
      claimed: 0,
    },
  );
});

Deno.test("DELETE /v1/regions/{region} is refused with 409 while anything still uses the region", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);

  await t.step("its resources", () => assertRefused(app, "iad", "resources"));

  await t.step("a removal whose leases are still being ended (a crash cut it short)", async () => {
    const granted = (await claim(app, "iad", { holder: "a" })).body;
    // The removal's commit landed, the lease loss after it did not (resources.ts).
    await app.kv.atomic()
      .delete(keys.resource("iad", "res-0000"))
      .set(keys.leaseLoss("iad", "res-0000"), { reason: "resource deleted" })
      .commit();
    await assertRefused(app, "iad", "live leases");
    assert.equal(await finishLeaseLosses(app.kv, app.clock, "iad"), 1);
    assert.equal((await getClaim(app, granted.id)).state, "lost");
  });

  await t.step("status waiting to be applied, then dead-lettered", async () => {
    const update = { resource: "res-0009", seq: 1, state: "draining" } as const;
    const waiting = await ingestStatus(app.kv, app.clock, "iad", [update]);
    await assertRefused(app, "iad", "status messages waiting to be applied");
    await new StatusApplier(app.kv, app.clock).apply(waiting.messages);
    await assertRefused(app, "iad", "resources", "the status registered one");
    assert.equal((await app.request("DELETE", "/v1/regions/iad/resources/res-0009")).status, 200);

    const lost = await ingestStatus(app.kv, app.clock, "iad", [{ ...update, seq: 2 }]);
    await app.kv.set(keys.deadLetter("iad", lost.messages[0].id), lost.messages[0]);
    assertInUse(await deleteRegion(app, "iad"), "iad", "dead-lettered status messages");
    // The deletion retired the dead message's pending entry, as a read of the region does.
    await assertRefused(app, "iad", "dead-lettered status messages");
    const discarded = await app.request(
      "DELETE",
      `/v1/regions/iad/dead-letters/${lost.messages[0].id}`,
    );
    assert.equal(discarded.status, 204, JSON.stringify(discarded.body));
  });

  await t.step("regions that name it as their backup", async () => {
    for (const name of ["fra", "lhr"]) {
      assert.equal(
        (await app.request("PUT", `/v1/regions/${name}`, { body: { backup: "iad" } })).status,
        201,
      );
    }
    await assertRefused(app, "iad", 'the backup of "fra", "lhr"');
    await app.request("PUT", "/v1/regions/fra", { body: {} });
    await app.request("PUT", "/v1/regions/lhr", { body: {} });
  });

  await t.step("and it goes once nothing does", async () => {
    assert.equal((await deleteRegion(app, "iad")).status, 200);
  });
});

Deno.test("DELETE /v1/regions/{region} is for admins of the region only", async () => {
  await using t = await makeApp();
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  await t.request("PUT", "/v1/regions/fra", { body: {} });
  assertProblem(await deleteRegion(t, "iad", TOKENS.client), 403);
  assertProblem(await deleteRegion(t, "iad", TOKENS.agent), 403);
  assertProblem(await deleteRegion(t, "iad", TOKENS.adminFra), 403);
  assertProblem(await t.request("DELETE", "/v1/regions/iad", { token: null }), 401);
  assertProblem(await deleteRegion(t, "not a region!"), 400);
  assertProblem(await deleteRegion(t, "nowhere"), 404);
  assert.equal((await t.request("GET", "/v1/regions/iad")).status, 200, "still there");

  // A region-scoped admin is not told the names of regions outside its scope.
  await t.request("PUT", "/v1/regions/iad", { body: { backup: "fra" } });
  const scoped = await deleteRegion(t, "fra", TOKENS.adminFra);
  assertInUse(scoped, "fra", "the backup of 1 other region \\(");
  assert.doesNotMatch(scoped.body.detail, /iad/);
  assertInUse(await deleteRegion(t, "fra"), "fra", 'the backup of "iad" \\(');
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  assert.equal((await deleteRegion(t, "fra", TOKENS.adminFra)).status, 200);
});

/** Racing apps (racingApps) over a KV that holds region "iad". */
async function racing() {
  const apps = await racingApps();
  await apps.racer.request("PUT", "/v1/regions/iad", { body: {} });
  return apps;
}

Deno.test("a region deleted while something races the deletion: never state left in a deleted region", async (t) => {
  await t.step("a resource registered between the deletion's reads and its commit", async () => {
    await using r = await racing();
    const raced = r.armed(() =>
      r.racer.request("PUT", "/v1/regions/iad/resources/late", { body: {} })
    );
    assertInUse(await deleteRegion(r.subject, "iad"), "iad", "resources");
    assert.deepEqual(await snapshotKv(r.racer.kv), await raced, "only the racer's write");
  });

  await t.step("the deletion between a resource registration's reads and its commit", async () => {
    await using r = await racing();
    r.hook.arm(() => deleteRegion(r.racer, "iad"));
    assertProblem(
      await r.subject.request("PUT", "/v1/regions/iad/resources/late", { body: {} }),
      404,
    );
    assert.ok(r.hook.fired());
    assert.deepEqual(await kindsUnder(r.racer.kv, "iad"), ["rv"]);
  });

  await t.step("a status batch accepted between the deletion's reads and its commit", async () => {
    await using r = await racing();
    const raced = r.armed(() =>
      r.racer.request("POST", "/v1/regions/iad/status", {
        token: TOKENS.agent,
        body: { updates: [{ resource: "late", seq: 1, state: "ready" }] },
      })
    );
    assertInUse(await deleteRegion(r.subject, "iad"), "iad", "status messages waiting");
    assert.deepEqual(await snapshotKv(r.racer.kv), await raced, "only the racer's write");
  });

  await t.step("the deletion between a status batch's reads and its commit", async () => {
    await using r = await racing();
    const recording = recordEnqueues(r.subject.kv);
    r.hook.arm(() => deleteRegion(r.racer, "iad"));
    await assert.rejects(
      ingestStatus(recording.kv, r.subject.clock, "iad", [
        { resource: "late", seq: 1, state: "ready" },
      ]),
      /Region "iad" does not exist/,
    );
    assert.ok(r.hook.fired());
    assert.deepEqual(recording.enqueued, [], "nothing queued for a deleted region");
    assert.deepEqual(await kindsUnder(r.racer.kv, "iad"), ["rv"]);
  });

  await t.step("a region naming it as backup between the deletion's reads and commit", async () => {
    await using r = await racing();
    const raced = r.armed(() =>
      r.racer.request("PUT", "/v1/regions/fra", { body: { backup: "iad" } })
    );
    assertInUse(await deleteRegion(r.subject, "iad"), "iad", 'the backup of "fra"');
    assert.deepEqual(await snapshotKv(r.racer.kv), await raced, "only the racer's write");
  });

  await t.step("the deletion between a region's naming it as backup and its commit", async () => {
    await using r = await racing();
    r.hook.arm(() => deleteRegion(r.racer, "iad"));
    const named = await r.subject.request("PUT", "/v1/regions/fra", { body: { backup: "iad" } });
    assertProblem(named, 422, "backup");
    assert.equal((await r.racer.request("GET", "/v1/regions/fra")).status, 404);
  });
});

Deno.test("a resource removal finished by another (the sweep chain) leaves no mark in a region deleted meanwhile", async () => {
  const inner = await Deno.openKv(":memory:");
  let racer: (() => Promise<void>) | null = null;
  const lossKey = JSON.stringify(keys.leaseLoss("iad", "res-0000"));
  // Runs `racer` once, as the removal reads its lease-loss record to finish it.
  const kv = kvWith(inner, {
    get: async (key, options) => {
      const run = JSON.stringify(key) === lossKey ? racer : null;
      racer = run ? null : racer;
      await run?.();
      return await inner.get(key, options);
    },
  });
  await using subject = await makeApp({ kv });
  await using other = await makeApp({ kv: inner, clock: subject.clock });
  await seedRegion(subject, "iad", 1);
  assert.equal((await claim(subject, "iad")).status, 201);
  racer = async () => {
    assert.equal(await finishLeaseLosses(inner, subject.clock, "iad"), 1);
    assert.equal((await deleteRegion(other, "iad")).status, 200);
  };
  assert.equal((await subject.request("DELETE", "/v1/regions/iad/resources/res-0000")).status, 200);
  assert.equal(racer, null, "the racer ran");
  assert.deepEqual(await kindsUnder(inner, "iad"), ["claim", "rv", "tel"]);
  inner.close();
});

Deno.test("a backup's claim for a region deleted between its routing and its commit marks nothing there", async () => {
  await using r = await racing();
  await seedRegion(r.racer, "fra", 2);
  await r.racer.request("PUT", "/v1/regions/iad", {
    body: { backup: "fra", lag: { enterMs: 1000, exitMs: 100 } },
  });
  // iad lags (a batch waits past enterMs), so it serves its claims from fra.
  const { messages } = await ingestStatus(r.racer.kv, r.racer.clock, "iad", [
    { resource: "x", seq: 1, state: "ready" },
  ]);
  r.racer.clock.advance(5_000);
  assert.equal((await r.racer.request("GET", "/v1/regions/iad")).body.mode, "fallback");
  r.hook.arm(async () => {
    // The batch dead-lettered and discarded, the region (empty now) is deleted.
    await r.racer.kv.set(keys.deadLetter("iad", messages[0].id), messages[0]);
    const discarded = await r.racer.request(
      "DELETE",
      `/v1/regions/iad/dead-letters/${messages[0].id}`,
    );
    assert.equal(discarded.status, 204);
    assert.equal((await deleteRegion(r.racer, "iad")).status, 200);
  });
  const granted = await claim(r.subject, "iad", { holder: "h" }, { "idempotency-key": "k1" });
  assert.ok(r.hook.fired());
  assert.equal(granted.status, 201, JSON.stringify(granted.body));
  assert.equal(granted.body.servedBy, "fra");
  assert.deepEqual(await kindsUnder(r.racer.kv, "iad"), ["idem", "rv"], "its key, no write mark");
  assertProblem(await claim(r.subject, "iad", { holder: "h" }, { "idempotency-key": "k1" }), 404);
});

Deno.test("an Idempotency-Key outlives its region: 404 while the region is gone, its old claim once it is back", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 1);
  const first = await claim(t, "iad", { holder: "h" }, { "idempotency-key": "k1" });
  assert.equal((await release(t, first.body.id, first.body.secret)).status, 204);
  assert.equal((await t.request("DELETE", "/v1/regions/iad/resources/res-0000")).status, 200);
  assert.equal((await deleteRegion(t, "iad")).status, 200);
  assertProblem(await claim(t, "iad", { holder: "h" }, { "idempotency-key": "k1" }), 404);

  await seedRegion(t, "iad", 1);
  const again = await claim(t, "iad", { holder: "h" }, { "idempotency-key": "k1" });
  assert.equal(again.status, 201);
  assert.equal(again.body.id, first.body.id);
  assert.equal(again.headers.get("allot-claim-state"), "released");
});

Deno.test("a status applier's copy of a region's resources is not trusted across its deletion", async () => {
  for (const keptCopy of [false, true]) {
    await using t = await makeApp();
    const kept = new StatusApplier(t.kv, t.clock);
    const applier = () => keptCopy ? kept : new StatusApplier(t.kv, t.clock);
    const report = async (via: StatusApplier, seq: number) => {
      const update = { resource: "x", seq, state: "ready", load: seq / 100 } as const;
      const { messages } = await ingestStatus(t.kv, t.clock, "iad", [update]);
      await via.apply(messages);
    };
    const deleteAndCreateAgain = async () => {
      assert.equal((await t.request("DELETE", "/v1/regions/iad/resources/x")).status, 200);
      assert.equal((await deleteRegion(t, "iad")).status, 200);
      assert.equal((await t.request("PUT", "/v1/regions/iad", { body: {} })).status, 201);
    };
    await seedRegion(t, "iad", 0);
    await t.request("PUT", "/v1/regions/iad/resources/x", { body: {} });
    await report(new StatusApplier(t.kv, t.clock), 5);
    await deleteAndCreateAgain(); // x's tombstone keeps seq 5
    await report(applier(), 3); // older than the tombstone: nothing
    await t.request("PUT", "/v1/regions/iad/resources/x", { body: {} });
    await report(new StatusApplier(t.kv, t.clock), 10); // another isolate's applier
    await deleteAndCreateAgain(); // x's tombstone keeps seq 10
    await report(applier(), 7); // older than the tombstone: nothing, whichever applier
    const x = await t.request("GET", "/v1/regions/iad/resources/x");
    assert.equal(
      x.status,
      404,
      `${keptCopy ? "an applier kept" : "a new applier"}: ${x.body?.seq}`,
    );
  }
});

Deno.test("a deleted region's leftovers do nothing: its sweep chain stops, a status batch applies nothing", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 1);
  const granted = (await claim(t, "iad", { holder: "a" })).body;
  const { state, beat } = await readSweeper(t.kv, "iad");
  assert.ok(state.value && beat.value, "the claim started the region's sweep chain");
  const tick = {
    type: "lease.sweep",
    region: "iad",
    chain: state.value.chain,
    tick: beat.value.tick,
  };
  // A batch applied before the deletion, delivered again after it (at least once).
  const { messages } = await ingestStatus(t.kv, t.clock, "iad", [
    { resource: "res-0000", seq: 1, state: "ready" },
  ]);
  await new StatusApplier(t.kv, t.clock).apply(messages);
  assert.equal((await release(t, granted.id, granted.secret)).status, 204);
  assert.equal((await t.request("DELETE", "/v1/regions/iad/resources/res-0000")).status, 200);
  assert.equal((await deleteRegion(t, "iad")).status, 200);
  const left = await snapshotKv(t.kv);

  t.clock.advance(120_000);
  assert.equal(await handleQueueMessage(leaseQueueDeps(t), tick), "stale");
  await new StatusApplier(t.kv, t.clock).apply(messages);
  assert.deepEqual(await snapshotKv(t.kv), left);
});

Deno.test("a region deleted by another process stops its gauges here too", async (t) => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  assert.ok(gaugedRegions().includes("iad"));

  await t.step("at a request that finds it gone", async () => {
    for (const region of ["gone-a", "gone-b", "gone-c"]) observeRegion(region, 10, "primary", 0);
    assertProblem(await app.request("GET", "/v1/regions/gone-a"), 404);
    assertProblem(await app.request("GET", "/v1/regions/gone-b/resources"), 404);
    assertProblem(await claim(app, "gone-c", { holder: "h" }, { "idempotency-key": "k" }), 404);
    for (const region of ["gone-a", "gone-b", "gone-c"]) {
      assert.ok(!gaugedRegions().includes(region), region);
    }
  });

  await t.step("at the next tick of the region watch, held here or not", async () => {
    observeRegion("gone-d", 10, "fallback", 3);
    assert.ok(await takeWatch(app.kv, app.clock, "another process", app.clock.now() + 60_000));
    const watch = watchRegions(app.kv, app.clock, 1);
    try {
      const deadline = Date.now() + 10_000;
      while (gaugedRegions().includes("gone-d") && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    } finally {
      await watch.stop();
    }
    assert.ok(!gaugedRegions().includes("gone-d"));
    assert.ok(gaugedRegions().includes("iad"), "a region that exists keeps its gauges");
  });
});

Deno.test("the region watch passes over a region deleted after its listing", async () => {
  await using t = await makeApp();
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  // The listing still names "ghost", deleted since (the list is read a page ahead).
  const kv = kvWith(t.kv, {
    list: async function* (selector, options) {
      yield* t.kv.list(selector, options);
      if ("prefix" in selector && selector.prefix.length === 1) {
        yield { key: keys.regionConfig("ghost"), value: { name: "ghost" }, versionstamp: "0" };
      }
    },
  });
  assert.equal(await evaluateEveryRegion(kv, t.clock), 0);
});

/**
 * A KV handle over `inner` on which, once armed, the first read of `region`'s
 * configuration (describeRegion's) is preceded by that region's deletion through `inner`.
 */
function deletedBeforeItsRead(inner: Deno.Kv, region: string) {
  let armed = false;
  const kv = kvWith(inner, {
    getMany: async (wanted, options) => {
      if (armed && String(wanted[0]) === String(keys.regionConfig(region))) {
        armed = false;
        await removeRegion(inner, region, null);
      }
      return await inner.getMany(wanted, options);
    },
  });
  return { kv, arm: () => armed = true };
}

Deno.test("a region deleted just before it is described answers as documented", async (t) => {
  await t.step("a listing leaves it out", async () => {
    await using inner = await Deno.openKv(":memory:");
    const hook = deletedBeforeItsRead(inner, "bbb");
    await using app = await makeApp({ kv: hook.kv });
    for (const region of ["aaa", "bbb", "ccc"]) {
      assert.equal((await app.request("PUT", `/v1/regions/${region}`, { body: {} })).status, 201);
    }
    hook.arm();
    const listed = await app.request("GET", "/v1/regions");
    assert.equal(listed.status, 200, JSON.stringify(listed.body));
    assert.deepEqual(listed.body.items.map((r: { name: string }) => r.name), ["aaa", "ccc"]);
  });

  await t.step("a PUT answers the configuration it wrote, as an empty region", async () => {
    await using inner = await Deno.openKv(":memory:");
    const hook = deletedBeforeItsRead(inner, "bbb");
    await using app = await makeApp({ kv: hook.kv });
    hook.arm();
    const body = { lag: { enterMs: 3000, exitMs: 1000 } };
    const put = await app.request("PUT", "/v1/regions/bbb", { body });
    assert.equal(put.status, 201, JSON.stringify(put.body));
    assert.deepEqual(
      [put.body.name, put.body.lag, put.body.mode, put.body.total, put.body.pending],
      ["bbb", body.lag, "primary", 0, 0],
    );
    assert.equal(put.headers.get("allot-consistency-token"), put.body.consistencyToken);
    assert.equal((await app.request("GET", "/v1/regions/bbb")).status, 404, "it was deleted");
  });
});

Deno.test("deletions racing every kind of write, through two instances, never leave state in a deleted region", async (t) => {
  for (const seed of [1, 2, 7]) await t.step(`seed ${seed}`, () => raceDeletions(seed));
});

/** 150 rounds of four random operations at once, two through each of two app instances. */
async function raceDeletions(seed: number): Promise<void> {
  const kv = await Deno.openKv(":memory:");
  await using a = await makeApp({ kv });
  await using b = await makeApp({ kv, clock: a.clock });
  const random = seededRandom(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)];
  const regions = ["r1", "r2"] as const;
  const held: Array<{ id: string; secret: string }> = [];
  const queued: StatusBatchMessage[] = [];
  type Operation = (t: TestApp) => Promise<TestResponse | void>;
  const operations: Record<string, Operation> = {
    "put region": (t) =>
      t.request("PUT", `/v1/regions/${pick(regions)}`, {
        body: { backup: pick([null, ...regions]) },
      }),
    "delete region": (t) => t.request("DELETE", `/v1/regions/${pick(regions)}`),
    "put resource": (t) =>
      t.request("PUT", `/v1/regions/${pick(regions)}/resources/${pick(["x", "y"])}`, {
        body: { slots: pick([1, 2]) },
      }),
    "delete resource": (t) =>
      t.request("DELETE", `/v1/regions/${pick(regions)}/resources/${pick(["x", "y"])}`),
    "status": async (t) => {
      const update: StatusUpdate = {
        resource: pick(["x", "y"]),
        seq: Math.ceil(random() * 1e6),
        state: "ready",
      };
      const { messages } = await ingestStatus(t.kv, t.clock, pick(regions), [update]);
      queued.push(...messages);
    },
    "apply": async (t) => {
      await new StatusApplier(t.kv, t.clock).apply(queued.splice(0));
    },
    "claim": async (t) => {
      const key = { "idempotency-key": `k${Math.floor(random() * 4)}` };
      const res = await claim(t, pick(regions), { holder: "h" }, random() < 0.5 ? key : {});
      if (res.status === 201) held.push(res.body);
      return res;
    },
    "release": async (t) => {
      const granted = held.splice(Math.floor(random() * held.length), 1)[0];
      if (granted) return await release(t, granted.id, granted.secret);
    },
    // What an operator does before deleting a region, then the deletion, while others write.
    "empty and delete region": async (t) => {
      const region = pick(regions);
      await new StatusApplier(t.kv, t.clock).apply(queued.splice(0));
      for (const id of ["x", "y"]) {
        await t.request("DELETE", `/v1/regions/${region}/resources/${id}`);
      }
      return await t.request("DELETE", `/v1/regions/${region}`);
    },
  };
  const seen = new Map<string, number>();
  for (let round = 0; round < 150; round++) {
    const names = [a, b, a, b].map(() => pick(Object.keys(operations)));
    const outcomes = await Promise.allSettled(
      names.map((name, i) => operations[name]([a, b][i % 2])),
    );
    outcomes.forEach((outcome, i) => {
      // ingestStatus throws the 404 its route would answer, for a region deleted meanwhile.
      if (outcome.status === "rejected") assert.match(String(outcome.reason), /does not exist/);
      const answer = outcome.status === "fulfilled" ? outcome.value?.status ?? "ok" : 404;
      assert.notEqual(answer, 500, `round ${round}: ${names[i]} answered 500`);
      seen.set(`${names[i]} ${answer}`, (seen.get(`${names[i]} ${answer}`) ?? 0) + 1);
    });
    for (const region of regions) {
      if ((await kv.get(keys.regionConfig(region))).versionstamp !== null) continue;
      const left = (await kindsUnder(kv, region)).filter(
        (kind) => !["claim", "idem", "rv", "tel"].includes(kind),
      );
      assert.deepEqual(left, [], `round ${round}: "${region}" is deleted, yet holds ${left}`);
    }
  }
  for (
    const outcome of ["delete region 200", "delete region 409", "put resource 404", "claim 201"]
  ) {
    assert.ok(seen.has(outcome), `the run saw "${outcome}": ${JSON.stringify([...seen])}`);
  }
  kv.close();
}

Deno.test("a lease-loss record a crash left behind does not hold up its region's deletion", async (t) => {
  await t.step("a `gone` for a resource without leases, its loss never finished", async () => {
    await using app = await makeApp();
    await seedRegion(app, "zed", 1);
    const { messages } = await ingestStatus(app.kv, app.clock, "zed", [
      { resource: "res-0000", seq: 1, state: "gone" },
    ]);
    // The apply commits; every commit after it fails, as in a process killed right then.
    const dying = loseCommitAnswers(app.kv);
    dying.arm("answered", ...Array(10).fill("not landed"));
    await new StatusApplier(dying.kv, app.clock).apply(messages);
    assert.notEqual((await app.kv.get(keys.leaseLoss("zed", "res-0000"))).versionstamp, null);
    // Restarted: the redelivery finds it applied; the operator removes the resource, then
    // the region.
    assert.deepEqual(await new StatusApplier(app.kv, app.clock).apply(messages), [null]);
    assert.equal((await app.request("DELETE", "/v1/regions/zed/resources/res-0000")).status, 200);
    assert.equal((await app.kv.get(keys.leaseLoss("zed", "res-0000"))).versionstamp, null);
    assert.equal((await deleteRegion(app, "zed")).status, 200);
  });

  await t.step("a record whose leases all ended, in a region with nothing else left", async () => {
    await using app = await makeApp();
    await seedRegion(app, "zed", 1);
    assert.equal((await app.request("DELETE", "/v1/regions/zed/resources/res-0000")).status, 200);
    // Its sweep chain, which finishes such records, ended with the region's last lease.
    await app.kv.set(keys.leaseLoss("zed", "res-0000"), { reason: "resource deleted" });
    assert.equal((await deleteRegion(app, "zed")).status, 200);
    assert.equal((await app.kv.get(keys.leaseLoss("zed", "res-0000"))).versionstamp, null);
  });
});

Deno.test("more lease-loss records left behind than one commit can check do not make a region undeletable", async () => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/zed", { body: {} });
  // Left behind by crashes, each after its resource's leases (none) were ended.
  for (let i = 0; i < 91; i++) {
    await app.kv.set(keys.leaseLoss("zed", `res-${i}`), { reason: "resource gone" });
  }
  const first = await app.request("DELETE", "/v1/regions/zed");
  // Nothing will ever finish them: no lease, so no sweep chain; no resource to change.
  const again = await app.request("DELETE", "/v1/regions/zed");
  assert.deepEqual([first.status, again.status], [200, 404], JSON.stringify(first.body));
});
