import assert from "node:assert/strict";
import { StatusApplier } from "../lib/applier.ts";
import { handleQueueMessage, type StatusBatchMessage } from "../lib/queue.ts";
import { ingestStatus, MAX_PENDING_UPDATES, mergeUpdates } from "../lib/status.ts";
import { AtomicPlan, encodedSize } from "../lib/atomic.ts";
import { TooLargeError } from "../lib/errors.ts";
import type { StatusUpdate } from "../lib/schemas.ts";
import { keys } from "../lib/keys.ts";
import { deleteResource } from "../lib/resources.ts";
import {
  assertProblem,
  claim,
  interceptCommits,
  makeApp,
  poolOf,
  seedRegion,
  snapshotKv,
  type TestApp,
  TOKENS,
} from "./_helpers.ts";

/** The observable state of a region: its resources (minus timestamps) and pool figures. */
async function observe(t: TestApp, region: string) {
  const resources = await t.request("GET", `/v1/regions/${region}/resources?limit=1000`);
  const health = await t.request("GET", `/v1/regions/${region}`);
  // deno-lint-ignore no-explicit-any
  const items = resources.body.items.map(({ updatedAt: _u, ...rest }: any) => rest);
  const { total, free, claimed, pending, lagMs } = health.body;
  return { items, total, free, claimed, pending, lagMs };
}

/** Reports updates to region "iad" and applies them at once through `applier`; every message must commit. */
function reporter(t: TestApp, applier: StatusApplier) {
  return async (updates: StatusUpdate[]) => {
    const { messages } = await ingestStatus(t.kv, t.clock, "iad", updates);
    assert.deepEqual(await applier.apply(messages), messages.map(() => null));
  };
}

/** Three batches touching overlapping resources with partial fields, as an agent might send. */
const BATCHES: StatusUpdate[][] = [
  [
    { resource: "a", seq: 1, state: "ready", slots: 2, labels: { gpu: "a100" } },
    { resource: "b", seq: 1, state: "ready" },
    { resource: "c", seq: 5, state: "gone" },
  ],
  [
    { resource: "a", seq: 2, state: "draining", load: 0.4 },
    { resource: "b", seq: 2, state: "ready", labels: { zone: "x" }, slots: 3 },
    { resource: "c", seq: 4, state: "ready" },
    { resource: "d", seq: 1, state: "draining", slots: 4 },
  ],
  [
    { resource: "a", seq: 3, state: "ready", load: 0.9 },
    { resource: "b", seq: 3, state: "ready", slots: 1 },
    { resource: "d", seq: 2, state: "ready" },
  ],
];

async function ingestAll(t: TestApp, region: string): Promise<StatusBatchMessage[]> {
  await t.request("PUT", `/v1/regions/${region}`, { body: {} });
  const messages: StatusBatchMessage[] = [];
  for (const batch of BATCHES) {
    messages.push(...(await ingestStatus(t.kv, t.clock, region, batch)).messages);
  }
  return messages;
}

function shuffle<T>(items: T[], seed: number): T[] {
  const out = [...items];
  let s = seed;
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

Deno.test("status apply: duplicated and reordered deliveries end in the in-order state", async (t) => {
  await using reference = await makeApp();
  const inOrder = await ingestAll(reference, "iad");
  const applier = new StatusApplier(reference.kv, reference.clock);
  for (const message of inOrder) assert.deepEqual(await applier.apply([message]), [null]);
  const expected = await observe(reference, "iad");
  assert.equal(expected.pending, 0);
  const c = expected.items.find((r: { id: string }) => r.id === "c");
  assert.equal(c.state, "gone", "c's first report (seq 5) was gone; its older ready is a no-op");
  assert.deepEqual(expected.items.find((r: { id: string }) => r.id === "a"), {
    id: "a",
    region: "iad",
    slots: 2,
    labels: { gpu: "a100" },
    state: "ready",
    seq: 3,
    load: 0.9,
    claimed: 0,
  });

  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    await t.step(`permutation with duplicates, seed ${seed}`, async () => {
      await using other = await makeApp();
      const messages = await ingestAll(other, "iad");
      const deliveries = shuffle(
        [...messages, ...messages, messages[seed % messages.length]],
        seed,
      );
      const consumer = new StatusApplier(other.kv, other.clock, {
        maxMessagesPerCommit: 1 + (seed % 3),
      });
      // Some one by one, some in coalesced groups, like concurrent queue deliveries.
      const half = Math.floor(deliveries.length / 2);
      for (const message of deliveries.slice(0, half)) await consumer.apply([message]);
      await consumer.apply(deliveries.slice(half));
      assert.deepEqual(await observe(other, "iad"), expected);
    });
  }
});

Deno.test("status apply: a commit that fails midway is redelivered and nothing partial is visible", async () => {
  await using reference = await makeApp();
  const refMessages = await ingestAll(reference, "iad");
  await new StatusApplier(reference.kv, reference.clock).apply(refMessages);
  const expected = await observe(reference, "iad");

  await using t = await makeApp();
  const messages = await ingestAll(t, "iad");
  let commits = 0;
  const applier = new StatusApplier(t.kv, t.clock, {
    maxMessagesPerCommit: 1,
    faults: {
      beforeCommit() {
        if (++commits === 2) throw new Error("injected: consumer crashed before its second commit");
      },
    },
  });
  const outcomes = await applier.apply(messages);
  assert.equal(outcomes[0], null);
  assert.match(String(outcomes[1]), /injected/);
  assert.equal(outcomes[2], null, "later messages are not held hostage by a failed one");

  const between = await observe(t, "iad");
  const byId = (id: string) => between.items.find((r: { id: string }) => r.id === id);
  assert.equal(byId("a").load, 0.9, "message 3 applied");
  assert.equal(byId("a").slots, 2);
  assert.deepEqual(byId("b").labels, {}, "message 2's labels for b are not visible");
  assert.equal(byId("c").state, "gone", "message 2's older ready for c is not visible either");
  assert.equal(byId("d").slots, 1, "d registered by message 3, without message 2's slots");
  assert.equal(
    between.pending,
    messages[1].updates.length,
    "the failed message still counts as pending",
  );

  // The queue redelivers the failed message (and perhaps the others again).
  assert.deepEqual(await applier.apply(messages), [null, null, null]);
  assert.deepEqual(await observe(t, "iad"), expected);
});

Deno.test("status apply coalesces many messages into few commits, split at Deno KV's limits", async () => {
  await using t = await makeApp();
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  const ids = Array.from({ length: 400 }, (_, i) => `r-${i}`);
  const batch = (seq: number) =>
    ids.map((resource, i): StatusUpdate => ({ resource, seq, state: "ready", load: seq * i }));
  const registration = new StatusApplier(t.kv, t.clock);
  const first = (await ingestStatus(t.kv, t.clock, "iad", batch(1))).messages;
  assert.ok((await registration.apply(first)).every((o) => o === null));
  assert.equal(registration.stats.updates, 400);

  // Steady state: load reports on known resources, several batches in flight at once.
  const messages: StatusBatchMessage[] = [];
  for (let seq = 2; seq <= 6; seq++) {
    messages.push(...(await ingestStatus(t.kv, t.clock, "iad", batch(seq))).messages);
  }
  const applier = new StatusApplier(t.kv, t.clock);
  const outcomes = await applier.apply(shuffle(messages, 7));
  assert.ok(outcomes.every((o) => o === null));
  assert.equal(applier.stats.messages, messages.length);
  assert.ok(
    applier.stats.updates / applier.stats.commits >= 50,
    `${applier.stats.updates} updates in ${applier.stats.commits} commits`,
  );
  const health = await t.request("GET", "/v1/regions/iad");
  assert.deepEqual([health.body.total, health.body.free, health.body.pending], [400, 400, 0]);
  const r7 = await t.request("GET", "/v1/regions/iad/resources/r-7");
  assert.deepEqual(
    [r7.body.seq, r7.body.load],
    [6, 42],
    "the newest report wins whatever the order",
  );
});

Deno.test("status updates drive the pool: ready registers, draining keeps leases, gone loses them", async () => {
  await using t = await makeApp();
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  const report = reporter(t, new StatusApplier(t.kv, t.clock));
  await report([{ resource: "x", seq: 1, state: "ready", slots: 2 }]);
  const first = await claim(t, "iad", { holder: "one" });
  assert.equal(first.status, 201);
  await report([{ resource: "x", seq: 2, state: "draining" }]);
  assert.equal((await claim(t, "iad", { holder: "two" })).status, 503, "draining: no new claims");
  const renewed = await t.request("POST", `/v1/claims/${first.body.id}/renew`, {
    token: TOKENS.client,
    body: {},
    headers: { "allot-claim-secret": first.body.secret },
  });
  assert.equal(renewed.status, 200, "draining keeps live leases");
  await report([{ resource: "x", seq: 3, state: "gone" }]);
  const lost = await t.request("POST", `/v1/claims/${first.body.id}/renew`, {
    token: TOKENS.client,
    body: {},
    headers: { "allot-claim-secret": first.body.secret },
  });
  assert.equal(lost.status, 409);
  assert.equal((await t.request("GET", `/v1/claims/${first.body.id}`)).body.state, "lost");
  const health = await t.request("GET", "/v1/regions/iad");
  assert.deepEqual([health.body.total, health.body.free, health.body.claimed], [0, 0, 0]);
});

Deno.test("a gone followed by a ready in the same commit still loses the leases held before it", async (t) => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const applier = new StatusApplier(app.kv, app.clock);
  const report = reporter(app, applier);
  await report([{ resource: "x", seq: 1, state: "ready", slots: 2 }]);
  const leaseLosses = async () => {
    const left = [];
    for await (const e of app.kv.list({ prefix: keys.leaseLosses("iad") })) left.push(e.key);
    return left;
  };

  await t.step("in one batch: the browser died (seq 2) and came back (seq 3)", async () => {
    const before = await claim(app, "iad", { holder: "before" });
    await report([
      { resource: "x", seq: 3, state: "ready" },
      { resource: "x", seq: 2, state: "gone" },
    ]);
    const read = await app.request("GET", `/v1/claims/${before.body.id}`);
    assert.deepEqual([read.body.state, read.body.reason], ["lost", "resource gone"]);
    assert.deepEqual(await leaseLosses(), [], "the recorded loss is finished");
    const after = await claim(app, "iad", { holder: "after" });
    assert.equal(after.status, 201, "the resource is ready again");
    assert.ok(after.body.fencingToken > before.body.fencingToken);
  });

  await t.step("in two messages applied by one commit", async () => {
    const before = await claim(app, "iad", { holder: "before" });
    const gone = await ingestStatus(app.kv, app.clock, "iad", [
      { resource: "x", seq: 4, state: "gone" },
    ]);
    const back = await ingestStatus(app.kv, app.clock, "iad", [
      { resource: "x", seq: 5, state: "ready" },
    ]);
    const messages = [...gone.messages, ...back.messages];
    assert.deepEqual(await applier.apply(messages), messages.map(() => null));
    assert.equal((await app.request("GET", `/v1/claims/${before.body.id}`)).body.state, "lost");
  });

  await t.step("a replay of those updates loses nothing taken since", async () => {
    const since = await claim(app, "iad", { holder: "since" });
    await report([
      { resource: "x", seq: 4, state: "gone" },
      { resource: "x", seq: 5, state: "ready" },
    ]);
    assert.equal((await app.request("GET", `/v1/claims/${since.body.id}`)).body.state, "active");
  });

  await t.step(
    "a lease taken once the gone was reported is spared when it is back by the apply",
    async () => {
      // Only "since" (from the step before) holds x: the free slot goes to the claims below.
      const gone = await ingestStatus(app.kv, app.clock, "iad", [
        { resource: "x", seq: 6, state: "gone" },
      ]);
      const between = await claim(app, "iad", { holder: "between" });
      const back = await ingestStatus(app.kv, app.clock, "iad", [
        { resource: "x", seq: 7, state: "ready" },
      ]);
      assert.equal(between.status, 201);
      // Applied only now: "since" was taken before the gone was reported, "between" after.
      await applier.apply([...gone.messages, ...back.messages]);
      const state = async (id: string) => (await app.request("GET", `/v1/claims/${id}`)).body.state;
      assert.equal(await state(between.body.id), "active", "it may be on the instance back");
      const released = await app.request("DELETE", `/v1/claims/${between.body.id}`, {
        token: TOKENS.client,
        headers: { "allot-claim-secret": between.body.secret },
      });
      assert.equal(released.status, 204);
      const after = await claim(app, "iad", { holder: "after" });
      const late = await ingestStatus(app.kv, app.clock, "iad", [
        { resource: "x", seq: 8, state: "gone" },
        { resource: "x", seq: 9, state: "ready" },
      ]);
      const taken = await claim(app, "iad", { holder: "taken once it was back" });
      assert.equal(taken.status, 201);
      await applier.apply(late.messages);
      assert.equal(await state(after.body.id), "lost", "taken before the report");
      assert.equal(await state(taken.body.id), "active", "taken after the report was accepted");
    },
  );
});

/** An app with resource x (4 slots) ready at seq 1, and ways to report and read. */
async function flapping(kv?: Deno.Kv) {
  const app = await makeApp(kv ? { kv } : {});
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const applier = new StatusApplier(app.kv, app.clock);
  const ingest = async (update: StatusUpdate) =>
    (await ingestStatus(app.kv, app.clock, "iad", [update])).messages;
  const apply = async (messages: StatusBatchMessage[]) =>
    assert.deepEqual(await applier.apply(messages), messages.map(() => null));
  const claimed = async (holder: string) => {
    const res = await claim(app, "iad", { holder });
    assert.equal(res.status, 201);
    return res.body as { id: string };
  };
  const stateOf = async (c: { id: string }) =>
    (await app.request("GET", `/v1/claims/${c.id}`)).body.state;
  await apply(await ingest({ resource: "x", seq: 1, state: "ready", slots: 4 }));
  return {
    app,
    ingest,
    apply,
    claimed,
    stateOf,
    [Symbol.asyncDispose]: () => app[Symbol.asyncDispose](),
  };
}

Deno.test("a gone delivered after a newer report loses what the two applied together would", async (t) => {
  // The browser died (seq 2) and came back (seq 3); leases were taken before the death was
  // reported, while it was reported dead, and once it was reported back, before any apply.
  const deliveries = {
    "in order": (gone: StatusBatchMessage[], back: StatusBatchMessage[]) => [gone, back],
    "together": (gone: StatusBatchMessage[], back: StatusBatchMessage[]) => [[...gone, ...back]],
    "seq 3 first": (gone: StatusBatchMessage[], back: StatusBatchMessage[]) => [back, gone],
  };
  const outcome: Record<string, string[]> = {};
  for (const [name, deliver] of Object.entries(deliveries)) {
    const f = await flapping();
    const held = await f.claimed("held");
    const gone = await f.ingest({ resource: "x", seq: 2, state: "gone" });
    const whileDead = await f.claimed("taken while it was reported dead");
    const back = await f.ingest({ resource: "x", seq: 3, state: "ready" });
    const onceBack = await f.claimed("taken once it was reported back");
    for (const messages of deliver(gone, back)) await f.apply(messages);
    outcome[name] = await Promise.all([held, whileDead, onceBack].map(f.stateOf));
    const x = (await f.app.request("GET", "/v1/regions/iad/resources/x")).body;
    assert.deepEqual([x.state, x.seq], ["ready", 3], name);
    await f[Symbol.asyncDispose]();
  }
  await t.step("delivered late, it cuts where the two applied together cut", () => {
    assert.deepEqual(outcome["together"], ["lost", "active", "active"]);
    assert.deepEqual(outcome["seq 3 first"], outcome["together"]);
    // In order, the gone was applied alone, after those leases were taken: it ended them all.
    assert.deepEqual(outcome["in order"], ["lost", "lost", "lost"]);
  });

  await t.step("heartbeats between the comeback and the late gone move nothing", async () => {
    const states = [];
    for (const delivery of ["together", "beats first", "all apart"]) {
      await using f = await flapping();
      const held = await f.claimed("held");
      const gone = await f.ingest({ resource: "x", seq: 2, state: "gone" });
      const back = await f.ingest({ resource: "x", seq: 3, state: "ready" });
      if (delivery !== "together") await f.apply(back);
      const onceBack = await f.claimed("taken once it was back");
      const beat = await f.ingest({ resource: "x", seq: 4, state: "ready", load: 0.2 });
      if (delivery === "together") await f.apply([...gone, ...back, ...beat]);
      else if (delivery === "beats first") await f.apply([...beat, ...gone]);
      else for (const messages of [beat, gone]) await f.apply(messages);
      states.push([await f.stateOf(held), await f.stateOf(onceBack)]);
    }
    assert.deepEqual(states, Array(3).fill(["lost", "active"]));
  });

  await t.step(
    "a gone accepted after the newer report spares a lease taken once it was back",
    async () => {
      for (const together of [true, false]) {
        await using f = await flapping();
        const back = await f.ingest({ resource: "x", seq: 3, state: "ready" });
        if (!together) await f.apply(back);
        const onceBack = await f.claimed("taken once it was back");
        const gone = await f.ingest({ resource: "x", seq: 2, state: "gone" }); // a retried POST
        await f.apply(together ? [...back, ...gone] : gone);
        assert.equal(await f.stateOf(onceBack), "active", together ? "together" : "late");
      }
    },
  );

  await t.step("two copies of the late gone lose the same, applied apart or together", async () => {
    const states = [];
    for (const together of [true, false]) {
      await using f = await flapping();
      const held = await f.claimed("held");
      const first = await f.ingest({ resource: "x", seq: 2, state: "gone" });
      const between = await f.claimed("between the copies");
      const resent = await f.ingest({ resource: "x", seq: 2, state: "gone" });
      await f.apply(await f.ingest({ resource: "x", seq: 3, state: "ready" }));
      if (together) await f.apply([...resent, ...first]);
      else for (const copy of [first, resent]) await f.apply(copy);
      states.push([await f.stateOf(held), await f.stateOf(between)]);
    }
    assert.deepEqual(states, [["lost", "active"], ["lost", "active"]], "cut at the first copy");
  });
});

Deno.test("a late gone loses nothing twice, and leaves no lease-loss record", async (t) => {
  await using f = await flapping();
  const gone = await f.ingest({ resource: "x", seq: 2, state: "gone" });
  await f.apply(await f.ingest({ resource: "x", seq: 3, state: "ready" }));
  await f.apply(gone);
  const since = await f.claimed("since");

  await t.step("the gone sent again, in a new batch, changes nothing", async () => {
    await f.apply(await f.ingest({ resource: "x", seq: 2, state: "gone" }));
    assert.equal(await f.stateOf(since), "active");
  });

  await t.step("a gone older than one already applied changes nothing", async () => {
    await f.apply(await f.ingest({ resource: "x", seq: 5, state: "gone" }));
    await f.apply(await f.ingest({ resource: "x", seq: 6, state: "ready" }));
    const after = await f.claimed("after seq 6");
    await f.apply(await f.ingest({ resource: "x", seq: 4, state: "gone" }));
    assert.equal(await f.stateOf(after), "active");
  });

  await t.step("no lease-loss record is left behind", async () => {
    const left = [];
    for await (const e of f.app.kv.list({ prefix: keys.leaseLosses("iad") })) left.push(e.key);
    assert.deepEqual(left, []);
  });
});

Deno.test("a gone's lease loss never replaces a DELETE's unfinished one", async (t) => {
  for (const late of [false, true]) {
    await t.step(late ? "a late gone" : "a gone and a ready applied together", async () => {
      const commits = interceptCommits(await Deno.openKv(":memory:"));
      await using f = await flapping(commits.kv);
      const held = await f.claimed("held at the DELETE");
      // The DELETE commits with its loss record; the process dies before the lease is lost.
      commits.arm(() => {
        commits.arm(() => Promise.reject(new Error("crash")));
        return Promise.resolve();
      });
      await assert.rejects(deleteResource(f.app.kv, f.app.clock, "iad", "x"), /crash/);
      assert.equal(await f.stateOf(held), "active", "the crash left the loss unfinished");
      const again = await f.app.request("PUT", "/v1/regions/iad/resources/x", {
        body: { slots: 4 },
      });
      assert.equal(again.status, 201);
      // The new instance dies and comes back; its reports reach the queue before the sweep.
      const flap = [
        ...await f.ingest({ resource: "x", seq: 2, state: "gone" }),
        ...await f.ingest({ resource: "x", seq: 3, state: "ready" }),
      ];
      if (late) { for (const message of [flap[1], flap[0]]) await f.apply([message]); }
      else await f.apply(flap);
      const read = (await f.app.request("GET", `/v1/claims/${held.id}`)).body;
      assert.deepEqual([read.state, read.reason], ["lost", "resource deleted"]);
      const left = [];
      for await (const e of f.app.kv.list({ prefix: keys.leaseLosses("iad") })) left.push(e.key);
      assert.deepEqual(left, []);
    });
  }
});

Deno.test("a report accepted before a DELETE never applies, also once the resource is registered again", async (t) => {
  for (const by of ["a PUT", "a report"]) {
    await t.step(`registered again by ${by}, whatever reports follow, in any order`, async () => {
      for (const oldFirst of [true, false]) {
        await using f = await flapping();
        const old = await f.ingest({ resource: "x", seq: 5, state: "gone" });
        assert.equal((await f.app.request("DELETE", "/v1/regions/iad/resources/x")).status, 200);
        const again = by === "a PUT"
          ? (await f.app.request("PUT", "/v1/regions/iad/resources/x", { body: { slots: 1 } }))
            .status
          : await f.apply(await f.ingest({ resource: "x", seq: 3, state: "ready", slots: 1 }));
        if (by === "a PUT") assert.equal(again, 201);
        const fresh = await f.claimed("fresh");
        const beat = await f.ingest({ resource: "x", seq: 4, state: "ready", load: 0.3 });
        for (const messages of oldFirst ? [old, beat] : [beat, old]) await f.apply(messages);
        const x = (await f.app.request("GET", "/v1/regions/iad/resources/x")).body;
        assert.deepEqual([x.state, x.seq, await f.stateOf(fresh)], ["ready", 4, "active"]);
      }
    });
  }
});

Deno.test("an old gone and ready applied after a DELETE and a new registration spare the new leases", async () => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const applier = new StatusApplier(app.kv, app.clock);
  await reporter(app, applier)([{ resource: "x", seq: 1, state: "ready", slots: 1 }]);
  const flap = await ingestStatus(app.kv, app.clock, "iad", [
    { resource: "x", seq: 2, state: "gone" },
    { resource: "x", seq: 3, state: "ready" },
  ]);
  assert.equal((await app.request("DELETE", "/v1/regions/iad/resources/x")).status, 200);
  const again = await app.request("PUT", "/v1/regions/iad/resources/x", { body: { slots: 1 } });
  assert.equal(again.status, 201);
  const fresh = await claim(app, "iad", { holder: "fresh" });
  assert.equal(fresh.status, 201);
  assert.deepEqual(await applier.apply(flap.messages), [null]);
  assert.equal((await app.request("GET", `/v1/claims/${fresh.body.id}`)).body.state, "active");
});

Deno.test("POST status validates the batch whole and changes nothing on a 4xx", async (t) => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  await app.request("PUT", "/v1/regions/fra", { body: {} });
  const snapshot = async () => {
    const out = [];
    for await (const e of app.kv.list({ prefix: [] })) out.push([e.key, e.value, e.versionstamp]);
    return out;
  };
  const good = (n: number) =>
    Array.from({ length: n }, (_, i) => ({ resource: `r${i}`, seq: 1, state: "ready" }));
  const cases: Array<[string, unknown, number, string | null, string]> = [
    [
      "bad seq at index 3",
      { updates: [...good(3), { resource: "z", seq: 0, state: "ready" }] },
      422,
      "updates.3.seq",
      TOKENS.agent,
    ],
    [
      "unknown state",
      { updates: [{ resource: "z", seq: 1, state: "broken" }] },
      422,
      "updates.0.state",
      TOKENS.agent,
    ],
    [
      "unknown field",
      { updates: [{ resource: "z", seq: 1, state: "ready", colour: 1 }] },
      422,
      "updates.0.colour",
      TOKENS.agent,
    ],
    ["empty batch", { updates: [] }, 422, "updates", TOKENS.agent],
    ["too many updates", { updates: good(1001) }, 422, "updates", TOKENS.agent],
    [
      "bad resource id",
      { updates: [{ resource: "../x", seq: 1, state: "ready" }] },
      422,
      "updates.0.resource",
      TOKENS.agent,
    ],
    ["client token", { updates: good(1) }, 403, null, TOKENS.client],
    ["agent of another region", { updates: good(1) }, 403, null, TOKENS.agentFra],
  ];
  for (const [name, body, status, field, token] of cases) {
    await t.step(name, async () => {
      const before = await snapshot();
      const res = await app.request("POST", "/v1/regions/iad/status", { token, body });
      assert.equal(res.status, status, JSON.stringify(res.body));
      assert.equal(res.headers.get("content-type"), "application/problem+json");
      if (field) assert.equal(res.body.field, field);
      assert.deepEqual(await snapshot(), before);
    });
  }
  await t.step("a region-scoped agent reports for its own region", async () => {
    const res = await app.request("POST", "/v1/regions/fra/status", {
      token: TOKENS.agentFra,
      body: { updates: good(2) },
    });
    assert.equal(res.status, 202);
    assert.equal(res.body.accepted, 2);
    assert.match(res.body.consistencyToken, /^[0-9a-f]{20}$/);
  });
});

Deno.test("a dead-lettered status message stops counting as lag and is reported", async () => {
  await using t = await makeApp();
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  const { messages } = await ingestStatus(t.kv, t.clock, "iad", [
    { resource: "a", seq: 1, state: "ready" },
  ]);
  t.clock.advance(10_000);
  assert.equal((await t.request("GET", "/v1/regions/iad")).body.lagMs, 10_000);
  // What Deno KV does once a message's backoffSchedule is exhausted: write it to keysIfUndelivered.
  await t.kv.set(keys.deadLetter("iad", messages[0].id), messages[0]);
  const health = (await t.request("GET", "/v1/regions/iad")).body;
  assert.equal(health.lagMs, 0);
  assert.equal(health.pending, 0);
  assert.equal(health.deadLettered, 1);
});

Deno.test("a pile of dead-lettered status messages never fails a claim or a region read", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 2);
  // A long consumer outage: 700 accepted batches, each of which exhausted its retries.
  for (let seq = 1; seq <= 700; seq++) {
    const { messages } = await ingestStatus(t.kv, t.clock, "iad", [
      { resource: "res-0000", seq, state: "ready", load: seq },
    ]);
    await t.kv.set(keys.deadLetter("iad", messages[0].id), messages[0]);
  }
  const first = await claim(t, "iad");
  assert.equal(first.status, 201, JSON.stringify(first.body));
  // Each read retires a bounded number of them; a few reads retire them all.
  let health = (await t.request("GET", "/v1/regions/iad")).body;
  for (let read = 0; read < 5 && health.pending > 0; read++) {
    health = (await t.request("GET", "/v1/regions/iad")).body;
  }
  assert.deepEqual([health.pending, health.deadLettered, health.lagMs], [0, 700, 0]);
});

Deno.test("an unreadable status batch is retried until dead-lettered; other unreadable messages are dropped", async () => {
  await using t = await makeApp();
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  const deps = { kv: t.kv, clock: t.clock, applier: new StatusApplier(t.kv, t.clock) };
  const { messages } = await ingestStatus(t.kv, t.clock, "iad", [
    { resource: "a", seq: 1, state: "ready" },
  ]);
  // As a newer version might write it: a field this version does not know.
  const newer = { ...messages[0], updates: [{ ...messages[0].updates[0], zone: "b" }] };
  const logged: string[] = [];
  const consoleError = console.error;
  console.error = (line: string) => logged.push(line);
  try {
    await assert.rejects(handleQueueMessage(deps, newer), /unreadable status batch/);
  } finally {
    console.error = consoleError;
  }
  // Each failed delivery is a JSON log line naming the message, not Deno's plain text alone.
  const failed = logged.map((line) => JSON.parse(line))
    .find((line) => line.msg === "a queue message failed; the queue retries it");
  assert.deepEqual([failed?.type, failed?.region, failed?.id], ["status.batch", "iad", newer.id]);
  assert.match(failed.error, /unreadable status batch/);
  // A field no JSON can carry does not replace the error with the log line's own.
  await assert.rejects(
    handleQueueMessage(deps, { ...newer, region: 1n }),
    /unreadable status batch/,
  );
  // Its retries end in its dead letter, which takes it out of the region's lag.
  t.clock.advance(60_000);
  await t.kv.set(keys.deadLetter("iad", newer.id), newer);
  const health = (await t.request("GET", "/v1/regions/iad")).body;
  assert.deepEqual([health.pending, health.deadLettered, health.lagMs], [0, 1, 0]);
  // Not allot's (one KV queue may carry other apps' messages): dropped, even unprintable.
  for (const foreign of [{ type: "other", n: 1n }, 7n, null, "text"]) {
    assert.equal(await handleQueueMessage(deps, foreign), "ignored");
  }
});

Deno.test("a queued update whose labels an earlier version accepted (over 1,024 characters) is applied", async () => {
  await using t = await makeApp();
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  const deps = { kv: t.kv, clock: t.clock, applier: new StatusApplier(t.kv, t.clock) };
  const labels = Object.fromEntries(["a", "b", "c", "d", "e"].map((k) => [k, k.repeat(256)]));
  // As queued before the bound: the route would refuse these labels now (422).
  const { messages } = await ingestStatus(t.kv, t.clock, "iad", [
    { resource: "old", seq: 1, state: "ready", labels },
  ]);
  assert.equal(await handleQueueMessage(deps, messages[0]), "applied");
  const res = await t.request("GET", "/v1/regions/iad/resources/old");
  assert.deepEqual(res.body.labels, labels);
});

Deno.test("status batches are delivered end to end through kv.listenQueue", async () => {
  const kv = await Deno.openKv(":memory:");
  await using t = await makeApp({ kv });
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  const applier = new StatusApplier(t.kv, t.clock, {
    faults: {
      // The first delivery fails: the queue must redeliver it.
      beforeCommit: (() => {
        let failed = false;
        return () => {
          if (!failed) {
            failed = true;
            throw new Error("injected first-delivery failure");
          }
        };
      })(),
    },
  });
  const listening = t.kv.listenQueue(async (m) => {
    await handleQueueMessage({ kv: t.kv, clock: t.clock, applier }, m);
  });
  const posted = await t.request("POST", "/v1/regions/iad/status", {
    token: TOKENS.agent,
    body: { updates: [{ resource: "q1", seq: 1, state: "ready", load: 3 }] },
  });
  assert.equal(posted.status, 202);
  let resource = null;
  for (let i = 0; i < 200 && !resource; i++) {
    const res = await t.request("GET", "/v1/regions/iad/resources/q1");
    if (res.status === 200) resource = res.body;
    else await new Promise((r) => setTimeout(r, 25));
  }
  assert.ok(resource, "the update was applied after redelivery");
  assert.equal(resource.load, 3);
  assert.equal((await t.request("GET", "/v1/regions/iad")).body.pending, 0);
  t.kv.close();
  await listening;
});

Deno.test("the consumer holds at most its bound of a region's deliveries and puts the rest back in the queue", async (t) => {
  const kv = await Deno.openKv(":memory:");
  await using app = await makeApp({ kv });
  for (const region of ["iad", "fra", "sfo"]) {
    await app.request("PUT", `/v1/regions/${region}`, { body: {} });
  }
  let open!: () => void;
  const gate = new Promise<void>((resolve) => open = resolve);
  // Commits wait at the gate: the applier stays full while the test delivers more.
  const applier = new StatusApplier(app.kv, app.clock, {
    maxHeld: { total: 4, perRegion: 2 },
    faults: { beforeCommit: () => gate },
  });
  const deps = { kv: app.kv, clock: app.clock, applier };
  const ingest = async (region: string, resource: string) =>
    (await ingestStatus(app.kv, app.clock, region, [{ resource, seq: 1, state: "ready" }]))
      .messages[0];
  const held = [await ingest("iad", "a"), await ingest("iad", "b")].map((m) =>
    handleQueueMessage(deps, m)
  );

  await t.step("a region's delivery past its bound is deferred, not held", async () => {
    assert.equal(await handleQueueMessage(deps, await ingest("iad", "c")), "deferred");
    assert.equal(applier.stats.deferred, 1);
    const health = (await app.request("GET", "/v1/regions/iad")).body;
    assert.equal(health.pending, 3, "the deferred update still counts as pending");
  });

  await t.step("another region's is still taken, up to the bound of all regions", async () => {
    held.push(
      ...[await ingest("fra", "f1"), await ingest("fra", "f2")].map((m) =>
        handleQueueMessage(deps, m)
      ),
    );
    assert.equal(applier.stats.deferred, 1, "fra's two were taken");
    assert.equal(await handleQueueMessage(deps, await ingest("sfo", "s")), "deferred");
  });

  await t.step("a region's deferrals are spaced, each due later than the one before", () => {
    const delays = [0, 1, 2].map(() => applier.deferral("iad")!);
    assert.ok(delays[0] >= 250, String(delays));
    assert.ok(delays[0] < delays[1] && delays[1] < delays[2], String(delays));
    assert.ok(delays[2] <= 60_000, String(delays));
  });

  await t.step("another region's deferral is not due behind a flooding region's", () => {
    const flood = Array.from({ length: 100 }, () => applier.deferral("iad")!);
    const other = applier.deferral("sfo")!;
    assert.ok(other < flood[10], `sfo due in ${other} ms, iad's in ${flood.at(-1)} ms`);
  });

  await t.step("deferred messages come back through the queue and are applied", async () => {
    const listening = app.kv.listenQueue(async (m) => {
      await handleQueueMessage(deps, m);
    });
    open();
    assert.deepEqual(await Promise.all(held), ["applied", "applied", "applied", "applied"]);
    assert.equal(applier.deferral("iad"), null, "room again");
    for (const [region, resource] of [["iad", "c"], ["sfo", "s"]]) {
      let pending = -1;
      for (let i = 0; i < 200 && pending !== 0; i++) {
        pending = (await app.request("GET", `/v1/regions/${region}`)).body.pending;
        if (pending !== 0) await new Promise((r) => setTimeout(r, 25));
      }
      assert.equal(pending, 0, region);
      const res = await app.request("GET", `/v1/regions/${region}/resources/${resource}`);
      assert.equal(res.status, 200);
    }
    app.kv.close();
    await listening;
  });
});

Deno.test("when the bound of all regions is what is full, deferrals share one line, spaced", async () => {
  await using app = await makeApp();
  const applier = new StatusApplier(app.kv, app.clock, { maxHeld: { total: 2, perRegion: 32 } });
  const message = (region: string, id: string): StatusBatchMessage => ({
    type: "status.batch",
    id,
    region,
    enqueuedAt: 0,
    updates: [],
  });
  // Two regions' messages fill the bound of all (each far below its region's own).
  const held = [applier.submit(message("a", "m0")), applier.submit(message("b", "m1"))];
  const delays = Array.from({ length: 100 }, (_, i) => applier.deferral(`r${i}`)!);
  // At 100 messages a second (the first estimate), 100 deliveries need a second of room.
  assert.ok(delays.at(-1)! > delays[0] + 500, `due within ${delays.at(-1)! - delays[0]} ms`);
  await Promise.all(held); // no pending entries: applied already, as redeliveries are
});

Deno.test("status apply never works from a stale resource cache", async (t) => {
  await t.step(
    "an admin's PUT between two applies is kept, not overwritten from the cache",
    async () => {
      await using app = await makeApp();
      await app.request("PUT", "/v1/regions/iad", { body: {} });
      const report = reporter(app, new StatusApplier(app.kv, app.clock));
      await report([{ resource: "x", seq: 1, state: "ready", slots: 1 }]);
      await report([{ resource: "x", seq: 2, state: "ready", load: 0.5 }]); // from the cache
      const put = await app.request("PUT", "/v1/regions/iad/resources/x", {
        body: { slots: 3, labels: { gpu: "h100" }, state: "ready" },
      });
      assert.equal(put.status, 200, JSON.stringify(put.body));
      await report([{ resource: "x", seq: 3, state: "draining", load: 0.7 }]);
      const x = (await app.request("GET", "/v1/regions/iad/resources/x")).body;
      assert.deepEqual([x.state, x.slots, x.labels, x.load], ["draining", 3, { gpu: "h100" }, 0.7]);
    },
  );

  await t.step("two appliers with their own caches interleave on one region", async () => {
    await using reference = await makeApp();
    const inOrder = await ingestAll(reference, "iad");
    await new StatusApplier(reference.kv, reference.clock).apply(inOrder);
    const expected = await observe(reference, "iad");

    await using app = await makeApp();
    const messages = await ingestAll(app, "iad");
    const one = new StatusApplier(app.kv, app.clock, { maxMessagesPerCommit: 1 });
    const two = new StatusApplier(app.kv, app.clock, { maxMessagesPerCommit: 1 });
    // Each fills its cache, then the other writes: neither may trust its copy after that.
    await one.apply([messages[0]]);
    await two.apply([messages[1]]);
    const outcomes = await Promise.all([one.apply(messages), two.apply([...messages].reverse())]);
    assert.ok(outcomes.flat().every((o) => o === null), String(outcomes.flat()));
    assert.deepEqual(await observe(app, "iad"), expected);
  });

  await t.step("a resource deleted and reported again is registered afresh", async () => {
    await using app = await makeApp();
    await app.request("PUT", "/v1/regions/iad", { body: {} });
    const report = reporter(app, new StatusApplier(app.kv, app.clock));
    await report([{ resource: "y", seq: 5, state: "ready", slots: 2 }]);
    assert.equal((await app.request("DELETE", "/v1/regions/iad/resources/y")).status, 200);
    await report([{ resource: "y", seq: 6, state: "ready" }]);
    const y = (await app.request("GET", "/v1/regions/iad/resources/y")).body;
    assert.deepEqual([y.seq, y.slots], [6, 1], "the cached seq 5 spec was not used");
    const health = (await app.request("GET", "/v1/regions/iad")).body;
    assert.deepEqual([health.total, health.free], [1, 1]);
  });

  await t.step("a tombstone that Deno KV expired is gone for a warm applier too", async () => {
    await using app = await makeApp();
    await app.request("PUT", "/v1/regions/iad", { body: {} });
    const warm = reporter(app, new StatusApplier(app.kv, app.clock));
    await warm([{ resource: "x", seq: 50, state: "ready", slots: 2 }]);
    assert.equal((await app.request("DELETE", "/v1/regions/iad/resources/x")).status, 200);
    await warm([{ resource: "x", seq: 49, state: "ready" }]); // older than the tombstone: no-op
    // Expiry (expireIn) deletes the tombstone and leaves the resources version alone.
    app.clock.advance(25 * 3600 * 1000);
    await app.kv.delete(keys.telemetry("iad", "x"));
    await warm([{ resource: "y", seq: 1, state: "ready" }]);
    // A new agent for x starts its seqs over, as it may once the tombstone is gone.
    await warm([{ resource: "x", seq: 1, state: "ready", slots: 3 }]);
    const x = await app.request("GET", "/v1/regions/iad/resources/x");
    assert.equal(x.status, 200, `the warm applier kept the expired tombstone: ${x.body.detail}`);
    assert.deepEqual([x.body.seq, x.body.slots], [1, 3]);
  });
});

Deno.test("a report delayed past an admin's PUT changes none of the fields the PUT set", async (t) => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const report = reporter(app, new StatusApplier(app.kv, app.clock));
  const read = async () => {
    const { body } = await app.request("GET", "/v1/regions/iad/resources/pf");
    return [body.state, body.slots, body.labels, body.seq, body.load];
  };
  await report([{ resource: "pf", seq: 1, state: "ready", slots: 2, labels: { v: "one" } }]);
  await report([{ resource: "pf", seq: 10, state: "ready" }]);
  const put = await app.request("PUT", "/v1/regions/iad/resources/pf", {
    body: { slots: 3, labels: { v: "admin" }, state: "draining" },
  });
  assert.equal(put.status, 200, JSON.stringify(put.body));

  await t.step("a report sent before the PUT (seq 5 < 10) changes only its load", async () => {
    await report([
      { resource: "pf", seq: 5, state: "ready", slots: 7, labels: { v: "late" }, load: 0.5 },
    ]);
    assert.deepEqual(
      await read(),
      ["draining", 3, { v: "admin" }, 10, 0.5],
      "load is no spec field",
    );
  });

  await t.step("a report sent after it (seq 11) changes what it carries", async () => {
    await report([{ resource: "pf", seq: 11, state: "ready", labels: { v: "agent" } }]);
    assert.deepEqual(await read(), ["ready", 3, { v: "agent" }, 11, 0.5]);
  });
});

/**
 * A heartbeat (state only) applied between a PUT's read and its commit moves the seq past
 * the slots and labels it did not carry: the PUT must see it (it checks the telemetry), or
 * a report older than the heartbeat would undo what the PUT set.
 */
Deno.test("a PUT racing a status apply still comes after every report applied before it", async (t) => {
  for (const race of [false, true]) {
    await t.step(
      race ? "heartbeat applied between the PUT's read and commit" : "sequential",
      async () => {
        await using inner = await Deno.openKv(":memory:");
        const hook = interceptCommits(inner);
        await using app = await makeApp({ kv: hook.kv });
        await app.request("PUT", "/v1/regions/iad", { body: {} });
        const applier = new StatusApplier(inner, app.clock);
        const ingest = async (u: StatusUpdate) =>
          (await ingestStatus(inner, app.clock, "iad", [u])).messages;
        const apply = async (m: StatusBatchMessage[]) =>
          assert.deepEqual(await applier.apply(m), m.map(() => null));

        await apply(
          await ingest({ resource: "r", seq: 10, state: "ready", slots: 2, labels: { v: "one" } }),
        );
        // Sent by the agent before the PUT, delivered late:
        const late = await ingest({
          resource: "r",
          seq: 11,
          state: "ready",
          slots: 7,
          labels: { v: "late" },
        });
        const beat = await ingest({ resource: "r", seq: 12, state: "ready" });
        if (race) hook.arm(() => apply(beat));
        else await apply(beat);
        const put = await app.request("PUT", "/v1/regions/iad/resources/r", {
          body: { slots: 3, labels: { v: "admin" }, state: "ready" },
        });
        assert.equal(put.status, 200, JSON.stringify(put.body));
        if (race) assert.ok(hook.fired(), "the heartbeat was applied before the PUT committed");
        const atPut = (await app.request("GET", "/v1/regions/iad/resources/r")).body;
        assert.deepEqual([atPut.seq, atPut.slots, atPut.labels], [12, 3, { v: "admin" }]);

        await apply(late); // seq 11 <= 12, the resource's seq at the PUT
        const r = (await app.request("GET", "/v1/regions/iad/resources/r")).body;
        assert.deepEqual(
          [r.slots, r.labels],
          [3, { v: "admin" }],
          "a report with a seq not above the resource's at the PUT changed what the PUT set",
        );
      },
    );
  }
});

Deno.test("a PUT of a resource whose telemetry predates per-field seqs is not a 500", async () => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const created = await app.request("PUT", "/v1/regions/iad/resources/old", { body: { slots: 2 } });
  assert.equal(created.status, 201);
  // As written before fieldSeq was kept.
  await app.kv.set(keys.telemetry("iad", "old"), { seq: 5, load: 0.3, at: 0 });
  const put = await app.request("PUT", "/v1/regions/iad/resources/old", { body: { slots: 3 } });
  assert.equal(put.status, 200, JSON.stringify(put.body));
  assert.equal(put.body.slots, 3);
});

Deno.test("a status report older than a DELETE never brings the resource back", async (t) => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const applier = new StatusApplier(app.kv, app.clock);
  // seq 5 is accepted, but delivered late (redelivery backoff, a long backlog)...
  const late = await ingestStatus(app.kv, app.clock, "iad", [
    { resource: "x", seq: 5, state: "ready", slots: 2 },
  ]);
  // ...after seq 10 says gone and an operator deletes the resource.
  const gone = await ingestStatus(app.kv, app.clock, "iad", [
    { resource: "x", seq: 10, state: "gone" },
  ]);
  assert.deepEqual(await applier.apply(gone.messages), [null]);
  assert.equal((await app.request("DELETE", "/v1/regions/iad/resources/x")).status, 200);

  await t.step("the late report is a no-op, as it would be in order", async () => {
    assert.deepEqual(await applier.apply(late.messages), [null]);
    assertProblem(await app.request("GET", "/v1/regions/iad/resources/x"), 404);
    assertProblem(await claim(app, "iad", { holder: "h" }), 503);
    assert.deepEqual(await poolOf(app, "iad"), { total: 0, free: 0, claimed: 0 });
  });

  // Seq 6 carries a field (labels) that no applied update carried: by seq, it still came
  // before the deletion, so it may change nothing once the resource is registered again.
  const older = { resource: "x", seq: 6, state: "draining" as const, labels: { old: "yes" } };

  await t.step("a report newer than the last applied registers it again", async () => {
    await reporter(app, applier)([{ resource: "x", seq: 11, state: "ready" }]);
    await reporter(app, applier)([older]);
    const x = (await app.request("GET", "/v1/regions/iad/resources/x")).body;
    assert.deepEqual([x.state, x.seq, x.slots, x.labels, x.load], ["ready", 11, 1, {}, null]);
  });

  await t.step("a PUT over the tombstone keeps its seqs, but not its load", async () => {
    await reporter(app, applier)([{ resource: "z", seq: 8, state: "ready", load: 0.9 }]);
    assert.equal((await app.request("DELETE", "/v1/regions/iad/resources/z")).status, 200);
    const put = await app.request("PUT", "/v1/regions/iad/resources/z", { body: { slots: 2 } });
    assert.equal(put.status, 201);
    assert.deepEqual([put.body.seq, put.body.load], [8, null]);
    await reporter(app, applier)([{ ...older, resource: "z", seq: 7 }]);
    const z = (await app.request("GET", "/v1/regions/iad/resources/z")).body;
    assert.deepEqual([z.state, z.labels, z.slots], ["ready", {}, 2]);
  });

  await t.step(
    "a resource no report ever reached: a report accepted before its DELETE is older",
    async () => {
      assert.equal(
        (await app.request("PUT", "/v1/regions/iad/resources/p", { body: {} })).status,
        201,
      );
      const before = await ingestStatus(app.kv, app.clock, "iad", [
        { resource: "p", seq: 5, state: "ready", slots: 3 },
      ]);
      assert.equal((await app.request("DELETE", "/v1/regions/iad/resources/p")).status, 200);
      const after = await ingestStatus(app.kv, app.clock, "iad", [
        { resource: "p", seq: 1, state: "draining" },
      ]);
      assert.deepEqual(await applier.apply(before.messages), [null]);
      assertProblem(await app.request("GET", "/v1/regions/iad/resources/p"), 404);
      assert.deepEqual(await applier.apply(after.messages), [null]);
      const p = (await app.request("GET", "/v1/regions/iad/resources/p")).body;
      assert.deepEqual([p.state, p.seq, p.slots], ["draining", 1, 1]);
    },
  );

  await t.step("the seqs outlive the deletion only for a while", async () => {
    const stored = await app.kv.get(keys.telemetry("iad", "y"));
    assert.equal(stored.versionstamp, null);
    await reporter(app, applier)([{ resource: "y", seq: 3, state: "ready" }]);
    assert.equal((await app.request("DELETE", "/v1/regions/iad/resources/y")).status, 200);
    const tombstone = await app.kv.get<{ seq: number }>(keys.telemetry("iad", "y"));
    assert.equal(tombstone.value?.seq, 3, "kept, with an expiry (Deno KV drops it after)");
  });
});

Deno.test("a registration never frees a slot still held from before the resource was deleted", async () => {
  await using t = await makeApp();
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  // The window between a DELETE's commit and its leases being marked lost: slot 0 held, no spec.
  await t.kv.set(keys.slot("iad", "z", 0), { claimId: "iad.leftover" });
  await reporter(t, new StatusApplier(t.kv, t.clock))([
    { resource: "z", seq: 1, state: "ready", slots: 3 },
  ]);
  const free = [];
  for await (const entry of t.kv.list({ prefix: keys.freeIndex("iad") })) {
    free.push(entry.key.at(-1));
  }
  assert.deepEqual(free.sort(), [1, 2], "slot 0 stays held, not free");
});

Deno.test("consumers racing on one region fall back to per-entry checks and never give up", async () => {
  await using t = await makeApp();
  await t.request("PUT", "/v1/regions/iad", { body: {} });
  // A pause before each commit makes the eight consumers' commits overlap, as isolates' do.
  const pause = { beforeCommit: () => new Promise<void>((r) => setTimeout(r, 5)) };
  const appliers = Array.from(
    { length: 8 },
    () => new StatusApplier(t.kv, t.clock, { maxMessagesPerCommit: 4, faults: pause }),
  );
  let seq = 0;
  const outcomes = (await Promise.all(appliers.map(async (applier, a) => {
    const mine = [];
    for (let round = 0; round < 30; round++) {
      const updates = Array.from({ length: 5 }, (_, j): StatusUpdate => ({
        resource: `a${a}-r${j}`,
        seq: ++seq,
        state: "ready",
        load: round,
      }));
      const { messages } = await ingestStatus(t.kv, t.clock, "iad", updates);
      mine.push(...await applier.apply(messages));
    }
    return mine;
  }))).flat();
  assert.deepEqual(outcomes.filter((o) => o !== null), [], "no message ran out of retries");
  const conflicts = appliers.reduce((n, a) => n + a.stats.conflicts, 0);
  assert.ok(
    conflicts <= appliers.length,
    `${conflicts} conflicts: one each at most, then per-entry`,
  );
  const health = (await t.request("GET", "/v1/regions/iad")).body;
  assert.deepEqual([health.total, health.pending], [40, 0]);
  const last = (await t.request("GET", "/v1/regions/iad/resources/a3-r4")).body;
  assert.equal(last.load, 29);
});

/** 16 labels of 256 CJK characters: about 8 KB once V8 stores them, 4 KB by JSON's count. */
/** As wide as labels go: 1,024 characters that V8 stores two bytes each. */
const WIDE_LABELS = Object.fromEntries(
  Array.from({ length: 4 }, (_, i) => [`k${i}`, "漢".repeat(254)]),
);

Deno.test("status in non-Latin-1 text is sized as Deno KV counts bytes", async (t) => {
  await t.step("encodedSize() counts text V8 stores two bytes wide, and only that text", () => {
    assert.equal(encodedSize("ascii"), 7);
    assert.equal(encodedSize("é".repeat(10)), 12, "Latin-1 stays one byte a character");
    assert.equal(encodedSize({ n: 1n }), JSON.stringify({ n: "x".repeat(20) }).length);
    assert.ok(encodedSize("漢".repeat(100)) >= 200);
    const lone = "\uD800" + "a".repeat(255); // JSON escapes it as ASCII; V8 stores it wide
    assert.ok(encodedSize({ s: lone }) >= 512, String(encodedSize({ s: lone })));
    // One wide character widens its own string, not the update's other strings.
    const update = { resource: "r".repeat(100), labels: { a: "v".repeat(300), city: "Łódź" } };
    const size = encodedSize(update);
    assert.ok(size < 1.2 * JSON.stringify(update).length, `${size}`);
  });

  await t.step(
    "a batch at the body limit with a few wide characters per update is accepted",
    async () => {
      await using app = await makeApp();
      await app.request("PUT", "/v1/regions/iad", { body: {} });
      const labels = Object.fromEntries(
        [["city", "Łódź"], ...Array.from({ length: 6 }, (_, i) => [`k${i}`, "v".repeat(50)])],
      );
      const updates = Array.from({ length: 1000 }, (_, i): StatusUpdate => ({
        resource: `s${i}`,
        seq: 1,
        state: "ready",
        labels,
      }));
      const { accepted } = await ingestStatus(app.kv, app.clock, "iad", updates);
      assert.equal(accepted, 1000);
    },
  );

  await t.step("a valid batch of CJK labels is accepted (202) and applied, not a 500", async () => {
    await using app = await makeApp();
    await app.request("PUT", "/v1/regions/iad", { body: {} });
    const updates = Array.from({ length: 30 }, (_, i): StatusUpdate => ({
      resource: `s${i}`,
      seq: 1,
      state: "ready",
      labels: WIDE_LABELS,
    }));
    const res = await app.request("POST", "/v1/regions/iad/status", {
      token: TOKENS.agent,
      body: { updates },
    });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    assert.ok(res.body.messages > 1, "split into messages under the 64 KiB enqueue limit");
  });

  await t.step("resources of 64 slots with CJK labels apply beside other messages", async () => {
    await using app = await makeApp();
    await app.request("PUT", "/v1/regions/iad", { body: {} });
    const { messages } = await ingestStatus(app.kv, app.clock, "iad", [
      ...[0, 1].map((i): StatusUpdate => ({
        resource: `gpu-${i}`,
        seq: 1,
        state: "ready",
        slots: 64,
        labels: WIDE_LABELS,
      })),
    ]);
    messages.push(
      ...(await ingestStatus(app.kv, app.clock, "iad", [
        { resource: "plain", seq: 1, state: "ready", load: 0.5 },
      ])).messages,
    );
    const applier = new StatusApplier(app.kv, app.clock);
    assert.deepEqual(await applier.apply(messages), messages.map(() => null));
    const health = await app.request("GET", "/v1/regions/iad");
    assert.deepEqual([health.body.total, health.body.free], [129, 129]);
    const gpu = await app.request("GET", "/v1/regions/iad/resources/gpu-1");
    assert.deepEqual(gpu.body.labels, WIDE_LABELS);
  });

  await t.step(
    "a batch too large for one atomic once encoded is a 413 that stores nothing",
    async () => {
      await using app = await makeApp();
      await app.request("PUT", "/v1/regions/iad", { body: {} });
      const before = await snapshotKv(app.kv);
      const updates = Array.from({ length: 450 }, (_, i): StatusUpdate => ({
        resource: `s${i}`,
        seq: 1,
        state: "ready",
        labels: WIDE_LABELS,
      }));
      await assert.rejects(
        ingestStatus(app.kv, app.clock, "iad", updates),
        (error: unknown) => error instanceof TooLargeError && /smaller batches/.test(error.message),
      );
      assert.deepEqual(await snapshotKv(app.kv), before);
    },
  );

  await t.step("a size refusal at ingest's commit is a 413 too, and stores nothing", async () => {
    await using raw = await makeApp();
    await raw.request("PUT", "/v1/regions/iad", { body: {} });
    const intercepted = interceptCommits(raw.kv);
    await using app = await makeApp({ kv: intercepted.kv, clock: raw.clock });
    const before = await snapshotKv(raw.kv);
    intercepted.arm(() => {
      throw new TypeError("Total mutation size too large (max 819200 bytes)");
    });
    const res = await app.request("POST", "/v1/regions/iad/status", {
      token: TOKENS.agent,
      body: { updates: [{ resource: "a", seq: 1, state: "ready" }] },
    });
    assertProblem(res, 413);
    assert.deepEqual(await snapshotKv(raw.kv), before);
  });

  await t.step(
    "a plan counts written keys twice toward the total and apart, as Deno KV does",
    () => {
      const plan = (sets: number) => {
        const p = new AtomicPlan();
        for (let i = 0; i < sets; i++) p.set(["k".repeat(1000), i], 1);
        return p;
      };
      assert.ok(plan(70).fits());
      assert.ok(!plan(85).fits(), "over the 80 KiB of keys one commit may write");
      const deletes = new AtomicPlan();
      for (let i = 0; i < 85; i++) deletes.delete(["k".repeat(1000), i]);
      assert.ok(deletes.fits(), "deleted keys do not count toward it");
      const big = new AtomicPlan();
      for (let i = 0; i < 40; i++) big.set(["k".repeat(1990), i], "v".repeat(16_400));
      assert.ok(!big.fits(), "40 × (2 × 2 KB key + 16 KB value) is over the total");
    },
  );
});

Deno.test("a status commit that Deno KV refuses for its size is split and applied, not failed", async () => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const messages: StatusBatchMessage[] = [];
  for (const resource of ["a", "b", "c"]) {
    messages.push(
      ...(await ingestStatus(app.kv, app.clock, "iad", [
        { resource, seq: 1, state: "ready", slots: 2 },
      ])).messages,
    );
  }
  const intercepted = interceptCommits(app.kv);
  let refused = false;
  intercepted.arm(() => {
    refused = true;
    throw new TypeError("Total mutation size too large (max 819200 bytes)");
  });
  const applier = new StatusApplier(intercepted.kv, app.clock);
  assert.deepEqual(await applier.apply(messages), [null, null, null]);
  assert.ok(refused, "the size refusal was injected");
  assert.ok(applier.stats.commits >= 2, "the refused group went out in parts");
  const health = await app.request("GET", "/v1/regions/iad");
  assert.deepEqual([health.body.total, health.body.free, health.body.pending], [6, 6, 0]);
});

Deno.test("mergeUpdates(): an update no newer than a field's seq changes nothing; ties resolve alike in any order", async (t) => {
  const spec = { id: "r", slots: 2, labels: {}, state: "ready" as const, updatedAt: 0 };
  const telemetry = {
    seq: 5,
    load: null,
    at: 0,
    fieldSeq: { state: 5, slots: 5, labels: 5, load: 0 },
  };
  await t.step("an equal seq is not newer", () => {
    const same = { resource: "r", seq: 5, state: "ready" as const, slots: 9 };
    assert.equal(mergeUpdates("r", spec, telemetry, [same], 1), null);
  });
  await t.step("two updates with one seq merge the same in either order", () => {
    const u1 = { resource: "r", seq: 7, state: "ready" as const, slots: 3 };
    const u2 = { resource: "r", seq: 7, state: "ready" as const, slots: 4 };
    assert.deepEqual(
      mergeUpdates("r", spec, telemetry, [u1, u2], 1)!.spec,
      mergeUpdates("r", spec, telemetry, [u2, u1], 1)!.spec,
    );
  });
  await t.step("an update at a tombstone's own seq does not register the resource again", () => {
    const tombstone = {
      seq: 3,
      load: null,
      at: 0,
      fieldSeq: { state: 3, slots: 1, labels: 0, load: 0 },
    };
    const update = { resource: "y", seq: 3, state: "ready" as const, labels: { a: "b" } };
    assert.equal(mergeUpdates("y", null, tombstone, [update], 1), null);
  });
  await t.step(
    "a gone loses leases when newer than the newest that did, also if delivered late",
    () => {
      const gone = (seq: number) => ({ resource: "r", seq, state: "gone" as const });
      const dated = { ...telemetry, goneSeq: 2, stateAcceptedAt: "00000000000000050000" };
      const late = mergeUpdates("r", spec, dated, [gone(4), gone(2), gone(4)], 1)!;
      assert.deepEqual(late.goneBy, [gone(4), gone(4)], "the newest, every copy");
      assert.deepEqual(
        [late.spec.state, late.telemetry.goneSeq],
        ["ready", 4],
        "seq 5 still decides",
      );
      assert.equal(late.telemetry.stateAcceptedAt, "00000000000000050000");
      assert.equal(mergeUpdates("r", spec, late.telemetry, [gone(4), gone(3)], 1), null);
      const undated = { ...telemetry, goneSeq: 0 };
      assert.equal(mergeUpdates("r", spec, undated, [gone(4)], 1), null, "undated: none late");
      const newer = mergeUpdates("r", spec, undated, [gone(3), gone(6)], 1)!;
      assert.deepEqual([newer.goneBy, newer.spec.state, newer.telemetry.goneSeq], [
        [gone(6)],
        "gone",
        6,
      ]);
    },
  );
});

Deno.test("status ingest bounds a region's backlog, refusing with 503 + Retry-After, then accepts again", async (t) => {
  await using app = await makeApp();
  for (const region of ["iad", "fra"]) {
    assert.equal((await app.request("PUT", `/v1/regions/${region}`, { body: {} })).status, 201);
  }
  let seq = 0;
  const batch = (size = 1000): StatusUpdate[] =>
    Array.from({ length: size }, (_, i) => ({ resource: `r${i}`, seq: ++seq, state: "ready" }));
  const messages: StatusBatchMessage[] = [];
  for (let n = 0; n < MAX_PENDING_UPDATES; n += 1000) {
    messages.push(...(await ingestStatus(app.kv, app.clock, "iad", batch())).messages);
  }

  await t.step("a region at its bound refuses the next batch, naming the backlog", async () => {
    const refused = await app.request("POST", "/v1/regions/iad/status", {
      token: TOKENS.agent,
      body: { updates: batch(1) },
    });
    assertProblem(refused, 503);
    assert.equal(refused.headers.get("retry-after"), "2");
    assert.match(refused.body.detail, /region "iad": 100000 updates are still waiting/);
  });

  await t.step("another region is not held back by it", async () => {
    assert.equal((await ingestStatus(app.kv, app.clock, "fra", batch())).accepted, 1000);
  });

  await t.step("once some are applied, the region accepts again", async () => {
    await new StatusApplier(app.kv, app.clock).apply(messages.slice(0, 2));
    assert.equal((await ingestStatus(app.kv, app.clock, "iad", batch())).accepted, 1000);
  });
});

Deno.test("status ingest holds a region's backlog bound against concurrent batches", async (t) => {
  const fleet = (agents: number) =>
    Array.from({ length: agents }, (_, agent) => ({
      updates: Array.from({ length: 1000 }, (_, i) => ({
        resource: `r-${agent}-${i}`,
        seq: 1,
        state: "ready",
      })),
    }));
  const report = (app: TestApp, body: unknown) =>
    app.request("POST", "/v1/regions/iad/status", { token: TOKENS.agent, body });

  await t.step("near the bound, only the batches that fit are accepted", async () => {
    await using app = await makeApp();
    await app.request("PUT", "/v1/regions/iad", { body: {} });
    await app.kv.atomic()
      .sum(keys.counter("iad", "enqueued"), BigInt(MAX_PENDING_UPDATES - 1000)).commit();
    const answers = await Promise.all(fleet(8).map((body) => report(app, body)));
    const statuses = answers.map((a) => a.status).sort();
    assert.deepEqual(statuses, [202, 503, 503, 503, 503, 503, 503, 503]);
    for (const refused of answers.filter((a) => a.status === 503)) {
      assertProblem(refused, 503);
      assert.ok(refused.headers.get("retry-after"));
    }
    assert.equal((await app.request("GET", "/v1/regions/iad")).body.pending, MAX_PENDING_UPDATES);
  });

  await t.step("far from it, concurrent batches are all accepted", async () => {
    await using app = await makeApp();
    await app.request("PUT", "/v1/regions/iad", { body: {} });
    const answers = await Promise.all(fleet(8).map((body) => report(app, body)));
    assert.deepEqual(answers.map((a) => a.status), Array(8).fill(202));
    assert.equal((await app.request("GET", "/v1/regions/iad")).body.pending, 8000);
  });
});
