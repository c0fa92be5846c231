import assert from "node:assert/strict";
import { GroupEnder } from "../lib/ender.ts";
import { handleQueueMessage, type LeaseSweepMessage } from "../lib/queue.ts";
import { keys } from "../lib/keys.ts";
import { putResource } from "../lib/resources.ts";
import { CHAIN_LOST_MS, readSweeper, SWEEP_EVERY_MS, sweepRegion } from "../lib/sweeper.ts";
import {
  claim,
  getClaim,
  interceptCommits,
  leaseQueueDeps,
  makeApp,
  poolOf,
  recordEnqueues,
  release,
  renew,
  seedRegion,
  type TestApp,
} from "./_helpers.ts";

/** The tick its region's chain waits for, as the queue would deliver it. */
async function chainMessage(t: TestApp, region: string): Promise<LeaseSweepMessage> {
  const { state, beat } = await readSweeper(t.kv, region);
  assert.ok(state.value && beat.value, `region "${region}" has a sweep chain`);
  return { type: "lease.sweep", region, chain: state.value.chain, tick: beat.value.tick };
}

Deno.test("claims start one sweep chain per serving region and later claims rely on it", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 6, { config: { lease: { defaultMs: 1000, maxMs: 5000 } } });
  assert.equal((await readSweeper(app.kv, "iad")).state.value, null, "no lease, no chain");

  await t.step("the first claim starts it", async () => {
    assert.equal((await claim(app, "iad")).status, 201);
    const { state, beat } = await readSweeper(app.kv, "iad");
    assert.ok(state.value);
    assert.deepEqual(beat.value, { chain: state.value.chain, at: app.clock.now(), tick: 0 });
  });

  await t.step("concurrent and later claims and renews leave it alone", async () => {
    const before = await readSweeper(app.kv, "iad");
    const claims = await Promise.all(Array.from({ length: 4 }, () => claim(app, "iad")));
    assert.deepEqual(claims.map((r) => r.status), [201, 201, 201, 201]);
    app.clock.advance(300);
    assert.equal((await renew(app, claims[0].body.id, claims[0].body.secret)).status, 200);
    const after = await readSweeper(app.kv, "iad");
    assert.equal(after.state.versionstamp, before.state.versionstamp);
    assert.equal(after.beat.versionstamp, before.beat.versionstamp);
  });
});

Deno.test("lease.sweep expires what is due, keeps the chain while leases remain, then ends it", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 3, { config: { lease: { defaultMs: 1000, maxMs: 5000 } } });
  const deps = leaseQueueDeps(app);
  const start = app.clock.now();
  const a = await claim(app, "iad", { holder: "a", leaseMs: 1000 });
  const b = await claim(app, "iad", { holder: "b", leaseMs: 3000 });
  const first = await chainMessage(app, "iad");
  assert.equal(first.tick, 0);

  await t.step("an early tick expires nothing and beats", async () => {
    app.clock.advance(500);
    assert.equal(await handleQueueMessage(deps, first), "swept");
    assert.equal((await getClaim(app, a.body.id)).state, "active");
    const { beat } = await readSweeper(app.kv, "iad");
    assert.deepEqual(beat.value, { chain: first.chain, at: start + 500, tick: 1 });
  });

  await t.step("a redelivered tick does nothing: the chain goes on once", async () => {
    assert.equal(await handleQueueMessage(deps, first), "stale");
    assert.equal((await chainMessage(app, "iad")).tick, 1);
  });

  await t.step("a due tick expires exactly the due lease", async () => {
    app.clock.time = start + 1000;
    assert.equal(await handleQueueMessage(deps, await chainMessage(app, "iad")), "swept");
    assert.equal((await getClaim(app, a.body.id)).state, "expired");
    assert.equal((await getClaim(app, b.body.id)).state, "active");
    assert.deepEqual(await poolOf(app, "iad"), { free: 2, claimed: 1, total: 3 });
  });

  await t.step("the tick that expires the last lease ends the chain", async () => {
    const last = await chainMessage(app, "iad");
    app.clock.time = start + 3000;
    assert.equal(await handleQueueMessage(deps, last), "ended");
    assert.equal((await getClaim(app, b.body.id)).state, "expired");
    const { state, beat } = await readSweeper(app.kv, "iad");
    assert.equal(state.versionstamp, null);
    assert.equal(beat.versionstamp, null);
    assert.equal(await handleQueueMessage(deps, last), "stale", "its redelivery does nothing");
  });

  await t.step("a new lease starts another chain; the ended one stays dead", async () => {
    const c = await claim(app, "iad", { holder: "c" });
    assert.equal(c.status, 201);
    const next = await chainMessage(app, "iad");
    assert.notEqual(next.chain, first.chain);
    assert.equal(await handleQueueMessage(deps, { ...next, chain: first.chain }), "stale");
    assert.equal(await handleQueueMessage(deps, next), "swept");
  });
});

Deno.test("a tick delivered twice (at least once) does not fork its chain", async () => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 2, { config: { lease: { defaultMs: 60_000, maxMs: 60_000 } } });
  assert.equal((await claim(app, "iad", { holder: "long" })).status, 201);
  const tick = await chainMessage(app, "iad");
  const recording = recordEnqueues(app.kv);
  const deps = { ...leaseQueueDeps(app), kv: recording.kv };
  app.clock.advance(500);
  assert.equal(await handleQueueMessage(deps, tick), "swept");
  assert.equal(await handleQueueMessage(deps, tick), "stale", "the redelivery");
  // Play the queue on: each round delivers every message in flight once.
  const inFlight: number[] = [];
  let queue = recording.enqueued.splice(0);
  for (let round = 0; round < 5; round++) {
    inFlight.push(queue.length);
    app.clock.advance(1000);
    for (const message of queue) await handleQueueMessage(deps, message);
    queue = recording.enqueued.splice(0);
  }
  inFlight.push(queue.length);
  assert.deepEqual(inFlight, [1, 1, 1, 1, 1, 1], `ticks in flight after each round: ${inFlight}`);

  // Two deliveries at once: the second commits between the first's reads and commit.
  const racing = interceptCommits(app.kv);
  const current = await chainMessage(app, "iad");
  let second: string | undefined;
  racing.arm(async () => second = await handleQueueMessage(leaseQueueDeps(app), current));
  const firstOutcome = await handleQueueMessage({ ...leaseQueueDeps(app), kv: racing.kv }, current);
  assert.ok(racing.fired());
  assert.deepEqual([firstOutcome, second], ["stale", "swept"]);
  assert.equal((await chainMessage(app, "iad")).tick, current.tick + 1);
});

Deno.test("a sweep expires many due leases in shared commits through a group ender", async () => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 40, { config: { lease: { defaultMs: 1000, maxMs: 5000 } } });
  const claims = await Promise.all(Array.from({ length: 40 }, () => claim(app, "iad")));
  assert.ok(claims.every((r) => r.status === 201));
  const ender = new GroupEnder(app.kv, app.clock);
  app.clock.advance(1000);
  const outcome = await sweepRegion(app.kv, app.clock, await chainMessage(app, "iad"), ender);
  assert.equal(outcome, "ended");
  assert.equal(ender.stats.ended, 40);
  assert.ok(ender.stats.commits < 40, `${ender.stats.commits} commits for 40 expiries`);
  assert.deepEqual(await poolOf(app, "iad"), { free: 40, claimed: 0, total: 40 });
});

Deno.test("a chain whose heartbeat stopped is replaced by the next claim or renew", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 2, {
    config: { lease: { defaultMs: 10 * CHAIN_LOST_MS, maxMs: 10 * CHAIN_LOST_MS } },
  });
  const a = await claim(app, "iad", { holder: "a" });
  const lost = await chainMessage(app, "iad");

  await t.step("a claim after CHAIN_LOST_MS without a sweep starts a new chain", async () => {
    app.clock.advance(CHAIN_LOST_MS + 1);
    assert.equal((await claim(app, "iad", { holder: "b" })).status, 201);
    const replaced = await chainMessage(app, "iad");
    assert.notEqual(replaced.chain, lost.chain);
    assert.equal(await handleQueueMessage(leaseQueueDeps(app), lost), "stale");
  });

  await t.step("so does a renew", async () => {
    const before = await chainMessage(app, "iad");
    app.clock.advance(CHAIN_LOST_MS + 1);
    assert.equal((await renew(app, a.body.id, a.body.secret)).status, 200);
    assert.notEqual((await chainMessage(app, "iad")).chain, before.chain);
  });
});

/** Region "iad" whose chain holds no lease any more: its next tick ends it. */
async function chainAboutToEnd(app: TestApp): Promise<LeaseSweepMessage> {
  await seedRegion(app, "iad", 2, { config: { lease: { defaultMs: 1000, maxMs: 5000 } } });
  const first = await claim(app, "iad", { holder: "first" });
  assert.equal((await release(app, first.body.id, first.body.secret)).status, 204);
  return await chainMessage(app, "iad");
}

Deno.test("a lease committed while the chain ends is never left without a chain", async (t) => {
  await t.step(
    "a claim landing between the end's reads and its commit keeps the chain",
    async () => {
      await using app = await makeApp();
      const message = await chainAboutToEnd(app);
      const sweeping = interceptCommits(app.kv);
      let late: { status: number; body: { id: string } } | undefined;
      sweeping.arm(async () => late = await claim(app, "iad", { holder: "late" }));
      // The region holds no lease when the sweep reads it, so its first commit is the end.
      const outcome = await sweepRegion(sweeping.kv, app.clock, message);
      assert.ok(sweeping.fired());
      assert.equal(late?.status, 201);
      assert.equal(outcome, "swept", "the end failed its check on `held` and was retried");
      const next = await chainMessage(app, "iad");
      assert.deepEqual([next.chain, next.tick], [message.chain, message.tick + 1]);
      app.clock.advance(1000);
      assert.equal(await sweepRegion(app.kv, app.clock, next), "ended");
      assert.equal((await getClaim(app, late!.body.id)).state, "expired");
    },
  );

  await t.step("a claim that read the chain before it ended starts a new one", async () => {
    await using app = await makeApp();
    const message = await chainAboutToEnd(app);
    const claiming = interceptCommits(app.kv);
    await using racing = await makeApp({ kv: claiming.kv, clock: app.clock });
    claiming.arm(() => sweepRegion(app.kv, app.clock, message));
    const late = await claim(racing, "iad", { holder: "late" });
    assert.ok(claiming.fired());
    assert.equal(late.status, 201, JSON.stringify(late.body));
    const next = await chainMessage(app, "iad");
    assert.notEqual(next.chain, message.chain, "the claim's retry started a new chain");
    app.clock.advance(1000);
    assert.equal(await sweepRegion(app.kv, app.clock, next), "ended");
    assert.equal((await getClaim(app, late.body.id)).state, "expired");
  });
});

Deno.test("sweep chains are delivered end to end through kv.listenQueue", async () => {
  const kv = await Deno.openKv(":memory:");
  await using app = await makeApp({ kv });
  await seedRegion(app, "iad", 2, { config: { lease: { defaultMs: 1000, maxMs: 5000 } } });
  const outcomes: string[] = [];
  const listening = app.kv.listenQueue(async (message) => {
    outcomes.push(await handleQueueMessage(leaseQueueDeps(app), message));
  });
  const a = await claim(app, "iad", { holder: "a", leaseMs: 1000 });
  assert.equal(a.status, 201);
  // Due at once on the fake clock; the first tick is enqueued at most SWEEP_EVERY_MS away.
  app.clock.advance(1000);
  const deadline = Date.now() + 20 * SWEEP_EVERY_MS;
  while ((await readSweeper(app.kv, "iad")).state.versionstamp !== null) {
    assert.ok(Date.now() < deadline, `the chain did not end: ${outcomes.join(", ")}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.equal((await getClaim(app, a.body.id)).state, "expired");
  assert.deepEqual(await poolOf(app, "iad"), { free: 2, claimed: 0, total: 2 });
  assert.ok(outcomes.includes("ended"), outcomes.join(", "));
  kv.close();
  await listening;
});

Deno.test("a removal whose lease loss was cut short is finished by the region's sweep chain", async () => {
  const inner = await Deno.openKv(":memory:");
  const commits = interceptCommits(inner);
  await using app = await makeApp({ kv: commits.kv });
  await seedRegion(app, "iad", 1, { slots: 2 });
  const before = await claim(app, "iad", { holder: "before", leaseMs: 60_000 });
  assert.equal(before.status, 201);
  const { resource } = before.body;

  // The removal commits, then its lease loss fails (as a crash right after the commit
  // would leave it): the lease stays active for now.
  commits.arm(() => {
    commits.arm(() => Promise.reject(new TypeError("the process died here")));
    return Promise.resolve();
  });
  await assert.rejects(
    putResource(commits.kv, app.clock, "iad", resource, { slots: 2, labels: {}, state: "gone" }),
    TypeError,
  );
  assert.ok(commits.fired());
  assert.equal((await getClaim(app, before.body.id)).state, "active");

  // Registered again and claimed before anyone renews the old lease.
  await putResource(app.kv, app.clock, "iad", resource, { slots: 2, labels: {}, state: "ready" });
  const after = await claim(app, "iad", { holder: "after", leaseMs: 60_000 });
  assert.equal(after.status, 201);

  assert.equal(await sweepRegion(app.kv, app.clock, await chainMessage(app, "iad")), "swept");
  const lost = await getClaim(app, before.body.id);
  assert.deepEqual([lost.state, lost.reason], ["lost", "resource gone"]);
  assert.equal((await getClaim(app, after.body.id)).state, "active", "a later lease is spared");
  assert.deepEqual(await poolOf(app, "iad"), { total: 2, free: 1, claimed: 1 });
  const left = await Array.fromAsync(app.kv.list({ prefix: keys.leaseLosses("iad") }));
  assert.deepEqual(left, [], "the recorded loss is finished");
  inner.close();
});
