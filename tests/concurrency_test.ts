import assert from "node:assert/strict";
import { createClaim, LABEL_SCAN_LIMIT } from "../lib/allocate.ts";
import { NoCapacityError, UnavailableError } from "../lib/errors.ts";
import { keys } from "../lib/keys.ts";
import { ingestStatus } from "../lib/status.ts";
import { endLease } from "../lib/leases.ts";
import { checkHistory, grantEvent, type HistoryEvent, HistoryRecorder } from "./_checker.ts";
import {
  assertProblem,
  claim,
  getClaim,
  interceptCommits,
  kvWith,
  listPages,
  loseCommitAnswers,
  makeApp,
  poolOf,
  release,
  seedRegion,
  type TestApp,
  type TestResponse,
} from "./_helpers.ts";

/** Asserts every 201 holds a distinct (resource, slot) and distinct id and fencing token. */
function assertDistinctGrants(granted: TestResponse[]): void {
  const slots = new Set(granted.map((r) => `${r.body.servedBy}/${r.body.resource}#${r.body.slot}`));
  assert.equal(slots.size, granted.length, "a slot was granted twice");
  assert.equal(new Set(granted.map((r) => r.body.id)).size, granted.length, "a claim id repeats");
  assert.equal(
    new Set(granted.map((r) => r.body.fencingToken)).size,
    granted.length,
    "a fencing token repeats",
  );
}

/** Asserts the KV-backed views agree that exactly `held` slots are held. */
async function assertPoolState(
  t: TestApp,
  region: string,
  expected: { free: number; claimed: number; total: number },
): Promise<void> {
  assert.deepEqual(await poolOf(t, region), expected);
  const resources = await listPages<{ claimed: number; slots: number }>(
    t,
    `/v1/regions/${region}/resources?limit=7`,
  );
  const claimedPerResource = resources.items.reduce((n, r) => n + r.claimed, 0);
  assert.equal(claimedPerResource, expected.claimed);
  for (const resource of resources.items) assert.ok(resource.claimed <= resource.slots);
  const active = await listPages(t, `/v1/regions/${region}/claims?state=active&limit=50`);
  assert.equal(active.items.length, expected.claimed);
}

async function raceClaims(
  resources: number,
  slots: number,
  callers: number,
  instances = 1,
): Promise<void> {
  await using t = await makeApp();
  // Extra app instances over the same KV (each its own in-memory state), as on Deno Deploy.
  const apps: TestApp[] = [t];
  for (let i = 1; i < instances; i++) apps.push(await makeApp({ kv: t.kv, clock: t.clock }));
  await seedRegion(t, "iad", resources, { slots });
  const capacity = resources * slots;
  const answers = await Promise.all(
    Array.from(
      { length: callers },
      (_, i) => claim(apps[i % apps.length], "iad", { holder: `caller-${i}` }),
    ),
  );
  const granted = answers.filter((r) => r.status === 201);
  const refused = answers.filter((r) => r.status !== 201);
  assert.equal(granted.length, capacity);
  assert.equal(refused.length, callers - capacity);
  for (const res of refused) {
    assertProblem(res, 503);
    assert.match(res.headers.get("retry-after") ?? "", /^[1-9][0-9]*$/);
  }
  assertDistinctGrants(granted);
  const perResource = new Map<string, number>();
  for (const r of granted) {
    perResource.set(r.body.resource, (perResource.get(r.body.resource) ?? 0) + 1);
  }
  assert.equal(perResource.size, resources);
  for (const n of perResource.values()) assert.equal(n, slots);
  await assertPoolState(t, "iad", { free: 0, claimed: capacity, total: capacity });

  // Every grant is releasable exactly once, and the counters come back to a full pool.
  const released = await Promise.all(granted.map((r) => release(t, r.body.id, r.body.secret)));
  assert.ok(released.every((r) => r.status === 204));
  await assertPoolState(t, "iad", { free: capacity, claimed: 0, total: capacity });
}

Deno.test("claim() never double-allocates under 500 concurrent callers", async (t) => {
  await t.step("100 single-slot resources", () => raceClaims(100, 1, 500));
  await t.step("25 resources with 4 slots each", () => raceClaims(25, 4, 500));
  await t.step(
    "100 single-slot resources, through 5 app instances",
    () => raceClaims(100, 1, 500, 5),
  );
});

Deno.test("two app instances over one KV never double-allocate", async () => {
  await using a = await makeApp();
  await using b = await makeApp({ kv: a.kv, clock: a.clock });
  await seedRegion(a, "iad", 20, { slots: 1, prefix: "single" });
  await seedRegion(a, "iad", 10, { slots: 4, prefix: "quad" });
  const capacity = 60;
  const history = new HistoryRecorder(a.clock);
  const apps = [a, b];

  async function tracedClaim(i: number): Promise<TestResponse> {
    const invoked = history.now();
    const res = await claim(apps[i % 2], "iad", { holder: `caller-${i}`, leaseMs: 600_000 });
    const acked = history.now();
    if (res.status === 201) {
      history.record(grantEvent(res.body, invoked, acked));
    } else assertProblem(res, 503);
    return res;
  }

  // Phase 0: one claim through each instance alone, so that both have committed into the
  // store whichever wins the races below (one instance's groups can, rarely, win them all).
  const alone = [await tracedClaim(0), await tracedClaim(1)];
  assert.deepEqual(alone.map((r) => r.status), [201, 201]);
  // Phase 1: 300 claims race through both instances for the other 58 slots.
  const first = [
    ...alone,
    ...await Promise.all(Array.from({ length: 300 }, (_, i) => tracedClaim(2 + i))),
  ];
  const held = first.filter((r) => r.status === 201);
  assert.equal(held.length, capacity);
  assertDistinctGrants(held);
  await assertPoolState(b, "iad", { free: 0, claimed: capacity, total: capacity });

  // Phase 2: half the holders release through one instance while 200 claims race
  // through both; releases and claims interleave across instances.
  const leaving = held.filter((_, i) => i % 2 === 0);
  const staying = held.filter((_, i) => i % 2 === 1);
  const [releases, second] = await Promise.all([
    Promise.all(leaving.map(async (r, i) => {
      const invoked = history.now();
      const res = await release(apps[i % 2], r.body.id, r.body.secret);
      const acked = history.now();
      assert.equal(res.status, 204, JSON.stringify(res.body));
      history.record({ kind: "release", claimId: r.body.id, invoked, acked } as HistoryEvent);
      return res;
    })),
    Promise.all(Array.from({ length: 200 }, (_, i) => tracedClaim(1000 + i))),
  ]);
  assert.equal(releases.length, leaving.length);
  const regained = second.filter((r) => r.status === 201);
  // A claim may finish before a release it raced with, so not every freed slot need be
  // taken; but none may be taken twice, and never more than were freed.
  assert.ok(regained.length <= leaving.length);
  assertDistinctGrants([...staying, ...regained]);
  const after = regained.length + staying.length;
  await assertPoolState(a, "iad", { free: capacity - after, claimed: after, total: capacity });

  assert.deepEqual(checkHistory(history.events), []);
});

/** Wraps `inner` so that listings of region `region`'s lease index wait for `open()`. */
function gateLeaseListings(inner: Deno.Kv, region: string) {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => open = resolve);
  let waited = 0;
  let sweeps = 0; // listings of what is due (a sweep), not of the soonest expiry
  let calls = 0;
  const kv = new Proxy(inner, {
    get(target, prop) {
      calls++;
      if (prop === "list") {
        return (selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
          const from = "prefix" in selector ? selector.prefix : selector.start;
          if (from?.[1] !== region || from?.[2] !== "lease") return target.list(selector, options);
          waited++;
          if ("start" in selector) sweeps++;
          return (async function* () {
            await opened;
            yield* target.list(selector, options);
          })();
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  /** Resolves once no KV call has been made for 20 turns of the event loop. */
  const quiet = async () => {
    for (let still = 0, seen = -1; still < 20; seen = calls) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      still = calls === seen ? still + 1 : 0;
    }
  };
  return { kv, open, waited: () => waited, sweeps: () => sweeps, quiet };
}

Deno.test("a claim's slow lone path (a full region's catch-up sweep) holds up no other claim", async () => {
  const inner = await Deno.openKv(":memory:");
  const gate = gateLeaseListings(inner, "full");
  await using t = await makeApp({ kv: gate.kv });
  await seedRegion(t, "full", 1);
  await seedRegion(t, "idle", 1);
  assert.equal((await claim(t, "full", { holder: "holder" })).status, 201);

  // Nothing is free in "full": that claim goes alone, and its catch-up sweep waits at the gate.
  const stuck = claim(t, "full", { holder: "waits" });
  while (gate.waited() === 0) await new Promise((resolve) => setTimeout(resolve, 1));
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<string>((resolve) => timer = setTimeout(resolve, 10_000, "held up"));
  const other = await Promise.race([claim(t, "idle", { holder: "other" }), bound]);
  clearTimeout(timer);
  gate.open();
  assert.notEqual(other, "held up", "a claim in another region waited for the lone path");
  assert.equal((other as TestResponse).status, 201);
  assertProblem(await stuck, 503);
  inner.close();
});

/**
 * A KV whose free-index listings that read past what a group may read (LABEL_SCAN_LIMIT)
 * wait at a gate until `open()`: only lone searches of the whole index (for labels few
 * slots match) do. `searches` counts them: waiting now, most at once, and in all.
 */
function gateWholeIndexSearches(inner: Deno.Kv) {
  const gate = Promise.withResolvers<void>();
  const searches = { now: 0, most: 0, total: 0 };
  const kv = kvWith(inner, {
    list: async function* (selector, options) {
      let read = 0;
      let counted = false;
      try {
        for await (const entry of inner.list(selector, options)) {
          if (entry.key[2] === "free" && ++read === LABEL_SCAN_LIMIT + 1) {
            counted = true;
            searches.total++;
            searches.most = Math.max(searches.most, ++searches.now);
            await gate.promise;
          }
          yield entry;
        }
      } finally {
        if (counted) searches.now--;
      }
    },
  });
  return { kv, searches, open: () => gate.resolve() };
}

/**
 * A lone claim (no group commit) in `region` for labels nothing has (`gpu: h<i>`), settled
 * to "granted" or the error it was refused with.
 */
function loneUnmatched(kv: Deno.Kv, clock: TestApp["clock"], region: string, i: number) {
  return createClaim(kv, clock, {
    region,
    caller: "c",
    input: { holder: `gpu-${i}`, labels: { gpu: `h${i}` } },
  }).then(() => "granted", (error: unknown) => error);
}

Deno.test("claims whose labels match no free slot hold up no other claim", async () => {
  const inner = await Deno.openKv(":memory:");
  const { kv, searches, open } = gateWholeIndexSearches(inner);
  await using t = await makeApp({ kv });
  // 2,560 free slots, none labelled "gpu": a search of them all reads more than 1,000 in one
  // of its two listings (from a random point to the end, then from the start), so it waits.
  await seedRegion(t, "iad", 40, { slots: 64 });
  const unmatched = Array.from(
    { length: 5 },
    (_, i) => claim(t, "iad", { holder: `gpu-${i}`, labels: { gpu: `h${i}` } }),
  );
  const ordinary = claim(t, "iad", { holder: "browser" });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<string>((resolve) => timer = setTimeout(resolve, 10_000, "held up"));
  const answered = await Promise.race([ordinary, bound]);
  clearTimeout(timer);
  open();
  assert.notEqual(answered, "held up", "an ordinary claim waited for the labelled claims' search");
  assert.equal((answered as TestResponse).status, 201);
  for (const res of await Promise.all(unmatched)) assertProblem(res, 503);
  assert.ok(searches.total > 0, "the labelled claims searched the whole index, alone");
  inner.close();
});

Deno.test("lone searches of the whole free index run two at a time", async () => {
  const inner = await Deno.openKv(":memory:");
  const { kv, searches, open } = gateWholeIndexSearches(inner);
  await using t = await makeApp({ kv });
  // 2,560 free slots, none labelled "gpu": a search of them all reads more than 1,000 in one
  // of its two listings (from a random point to the end, then from the start), so it waits.
  await seedRegion(t, "iad", 40, { slots: 64 });
  await seedRegion(t, "sfo", 3, { labels: { gpu: "h100" } });
  const unmatched = Array.from(
    { length: 6 },
    (_, i) => claim(t, "iad", { holder: `gpu-${i}`, labels: { gpu: `h${i}` } }),
  );
  while (searches.now < 2) await new Promise((resolve) => setTimeout(resolve, 1));
  // Time for the other four to start theirs, were they let.
  assert.equal((await claim(t, "iad", { holder: "browser" })).status, 201);
  for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setTimeout(resolve, 1));
  assert.equal(searches.most, 2, "searches at once");
  // A lone claim whose labels match within the first entries it reads does not wait its turn.
  const request = { region: "sfo", caller: "c", input: { holder: "h", labels: { gpu: "h100" } } };
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<string>((resolve) => timer = setTimeout(resolve, 10_000, "held up"));
  const early = await Promise.race([createClaim(kv, t.clock, request), bound]);
  clearTimeout(timer);
  assert.notEqual(early, "held up", "a matching lone claim waited behind whole-index searches");
  open();
  for (const res of await Promise.all(unmatched)) assertProblem(res, 503);
  inner.close();
});

Deno.test("past 64 lone searches waiting their turn, a claim for labels gets 503 at once", async () => {
  const inner = await Deno.openKv(":memory:");
  const { kv, searches, open } = gateWholeIndexSearches(inner);
  await using t = await makeApp({ kv });
  // 2,560 free slots, none labelled "gpu": a search of them all reads more than 1,000 in one
  // of its two listings (from a random point to the end, then from the start), so it waits.
  await seedRegion(t, "iad", 40, { slots: 64 });
  // Lone claims: two search the whole index, 64 wait, four are refused at once.
  const busy: unknown[] = [];
  const outcomes = Array.from(
    { length: 70 },
    (_, i) =>
      loneUnmatched(kv, t.clock, "iad", i).then((ended) => {
        if (ended instanceof UnavailableError) busy.push(ended);
        return ended;
      }),
  );
  const deadline = Date.now() + 10_000;
  while (busy.length < 4 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setTimeout(resolve, 1));
  assert.equal(busy.length, 4, "refused while 64 wait");
  assert.match(String(busy[0]), /too many searches for labels/);
  assert.equal(searches.now, 2, "searching the whole index at once");
  open();
  const ended = await Promise.all(outcomes);
  assert.equal(ended.filter((e) => e instanceof NoCapacityError).length, 66);
  inner.close();
});

Deno.test("a full line of whole-index searches", async (t) => {
  const inner = await Deno.openKv(":memory:");
  const { kv, searches, open } = gateWholeIndexSearches(inner);
  await using app = await makeApp({ kv });
  const lag = { enterMs: 2000, exitMs: 500 };
  // fra: 2,560 free slots, none labelled "gpu". iad, backed up by fra: one gpu slot. sfo: five.
  await seedRegion(app, "fra", 40, { slots: 64, config: { lag } });
  await seedRegion(app, "iad", 1, {
    labels: { gpu: "a100" },
    prefix: "iad",
    config: { backup: "fra", lag },
  });
  await seedRegion(app, "sfo", 5, { prefix: "sfo" });
  const lone = (region: string, i: number) => loneUnmatched(kv, app.clock, region, i);
  // 66 lone claims in fra for labels nothing has: two search the whole index, 64 wait.
  const waiting = Array.from({ length: 66 }, (_, i) => lone("fra", i));
  while (searches.now < 2) await new Promise((resolve) => setTimeout(resolve, 1));
  for (let turn = 0; turn < 50; turn++) await new Promise((resolve) => setTimeout(resolve, 1));

  await t.step("does not refuse a claim whose first read covered its whole index", async () => {
    const refused = await lone("sfo", 100);
    assert.ok(refused instanceof NoCapacityError, String(refused));
  });

  await t.step("does not stop a fallback claim its own region serves", async () => {
    await ingestStatus(app.kv, app.clock, "iad", [{
      resource: "iad-0000",
      seq: 1,
      state: "ready",
    }]);
    app.clock.advance(3000);
    assert.equal((await app.request("GET", "/v1/regions/iad")).body.mode, "fallback");
    const res = await claim(app, "iad", { holder: "h", labels: { gpu: "a100" } });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.servedBy, "iad");
  });

  await t.step("names the region asked for when it refuses", async () => {
    const refused = await lone("fra", 101);
    assert.ok(refused instanceof UnavailableError, String(refused));
    assert.match(refused.message, /region "fra": too many searches for labels/);
  });

  open();
  const ended = await Promise.all(waiting);
  assert.ok(ended.every((e) => e instanceof NoCapacityError), "the 66 that waited: no capacity");
  inner.close();
});

Deno.test("a claim that waited its turn once is not refused for a full line on its next search", async () => {
  const inner = await Deno.openKv(":memory:");
  // Each whole-index search waits at its own gate; expiry sweeps (lease listings) wait too.
  const released: Array<() => void> = [];
  const sweeps = Promise.withResolvers<void>();
  const kv = kvWith(inner, {
    list: async function* (selector, options) {
      const from = "prefix" in selector ? selector.prefix : selector.start;
      if (from?.[2] === "lease" && "start" in selector) await sweeps.promise;
      let read = 0;
      for await (const entry of inner.list(selector, options)) {
        if (entry.key[2] === "free" && ++read === LABEL_SCAN_LIMIT + 1) {
          await new Promise<void>((resolve) => released.push(resolve));
        }
        yield entry;
      }
    },
  });
  await using app = await makeApp({ kv });
  // 2,000 free slots, none labelled "gpu": a search of them all reads more than 1,000 in
  // exactly one of its two listings, so it waits at one gate.
  await seedRegion(app, "iad", 40, { slots: 50 });
  const tick = () => new Promise((resolve) => setTimeout(resolve, 1));
  const lone = (i: number) => loneUnmatched(kv, app.clock, "iad", i);
  const first = lone(0);
  while (released.length < 1) await tick();
  const others = Array.from({ length: 65 }, (_, i) => lone(i + 1)); // one more searching, 64 wait
  while (released.length < 2) await tick();
  for (let turn = 0; turn < 50; turn++) await tick();
  released[0](); // the first claim's search ends; it sweeps (held) and will search again
  const newcomer = lone(99); // takes the place its search left in line (or is refused)
  for (let turn = 0; turn < 100; turn++) await tick();
  sweeps.resolve();
  const releaseAll = setInterval(() => released.splice(0).forEach((release) => release()), 1);
  const [outcome, , ...rest] = await Promise.all([first, newcomer, ...others]);
  clearInterval(releaseAll);
  // Every claim that waited its turn once searched again as often as it had to: none refused.
  for (const ended of [outcome, ...rest]) {
    assert.ok(ended instanceof NoCapacityError, String(ended));
  }
  inner.close();
});

Deno.test("claims that find no free slot at once share one catch-up sweep", async () => {
  const inner = await Deno.openKv(":memory:");
  const gate = gateLeaseListings(inner, "full");
  await using t = await makeApp({ kv: gate.kv });
  await seedRegion(t, "full", 1);
  assert.equal((await claim(t, "full", { holder: "holder" })).status, 201);
  const refused = Array.from({ length: 10 }, (_, i) => claim(t, "full", { holder: `h${i}` }));
  await gate.quiet(); // every claim has found nothing and is sweeping or waiting for a sweep
  gate.open();
  for (const res of await Promise.all(refused)) assertProblem(res, 503);
  assert.equal(gate.sweeps(), 1, "one sweep for the ten claims");
  inner.close();
});

Deno.test("a claim does not wait on a catch-up sweep that began before its own read", async () => {
  const inner = await Deno.openKv(":memory:");
  const commits = interceptCommits(inner);
  await using t = await makeApp({ kv: commits.kv });
  await seedRegion(t, "full", 2);
  assert.equal((await claim(t, "full", { holder: "a", leaseMs: 1000 })).status, 201);
  assert.equal((await claim(t, "full", { holder: "b", leaseMs: 2000 })).status, 201);

  // At 1 s the first lease is due: a claim's catch-up sweep ends it, but that commit is held.
  t.clock.advance(1000);
  let holding!: () => void;
  const sweepHeld = new Promise<void>((resolve) => holding = resolve);
  let letGo!: () => void;
  commits.arm(() => {
    holding();
    return new Promise<void>((resolve) => letGo = resolve);
  });
  const first = claim(t, "full", { holder: "x" });
  await sweepHeld;
  // At 2 s the second is due too. A claim now must not join the held sweep (it began at
  // 1 s and lists nothing due later): it sweeps on its own and gets a slot.
  t.clock.advance(1000);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<string>((resolve) => timer = setTimeout(resolve, 10_000, "waited"));
  const second = await Promise.race([claim(t, "full", { holder: "y" }), bound]);
  clearTimeout(timer);
  letGo();
  assert.notEqual(second, "waited", "the claim waited on an older sweep");
  assert.equal((second as TestResponse).status, 201);
  assert.equal((await first).status, 201);
  inner.close();
});

Deno.test("a claim commit whose answer is lost after it landed answers its claims, and leaks no slot", async (t) => {
  const inner = await Deno.openKv(":memory:");
  const lost = loseCommitAnswers(inner);
  await using app = await makeApp({ kv: lost.kv });
  await seedRegion(app, "iad", 40);
  /** Claims `count` at once (the first commits alone, the rest form the next group). */
  async function claimChecked(name: string, count: number) {
    const before = await poolOf(app, "iad");
    const answers = await Promise.all(
      Array.from({ length: count }, (_, i) => claim(app, "iad", { holder: `${name} ${i}` })),
    );
    for (const granted of answers) {
      assert.equal(granted.status, 201, JSON.stringify(granted.body));
      const read = await getClaim(app, granted.body.id);
      assert.equal(read.fencingToken, granted.body.fencingToken, "the token GET shows");
      assert.equal(granted.body.consistencyToken, granted.body.fencingToken.slice(0, 20));
    }
    const after = await poolOf(app, "iad");
    assert.equal(after.claimed, before.claimed + count, "one claim holds one slot");
    return answers;
  }
  const cases: Array<[string, Parameters<typeof lost.arm>]> = [
    ["a group's commit", ["landed"]],
    ["a group's commit, sent again by the client", ["landed, retried"]],
    ["a lone claim's commit, after its group's failed", ["not landed", "landed"]],
    ["a lone claim's commit, sent again", ["not landed", "landed, retried"]],
    ["a commit that did not land goes alone", ["not landed"]],
  ];
  for (const [name, arming] of cases) {
    await t.step(name, async () => {
      lost.arm(...arming);
      await claimChecked(name, 1);
    });
  }
  await t.step("a group of six: each claim keeps its own slot and token", async () => {
    lost.arm("answered", "landed, retried");
    const answers = await claimChecked("six", 7);
    assert.equal(new Set(answers.map((a) => a.body.fencingToken)).size, 7);
  });
  await t.step("claims rewritten before the answer was recovered keep their tokens", async () => {
    lost.afterLanding(async (versionstamp) => {
      for await (const entry of inner.list<{ id: string }>({ prefix: keys.claims("iad") })) {
        if (entry.versionstamp === versionstamp) {
          await endLease(inner, app.clock, entry.value.id, { state: "lost", reason: "revoked" });
        }
      }
    });
    lost.arm("answered", "landed");
    const before = await poolOf(app, "iad");
    const answers = await Promise.all(
      Array.from({ length: 4 }, (_, i) => claim(app, "iad", { holder: `rewritten ${i}` })),
    );
    lost.afterLanding(async () => {});
    for (const granted of answers) {
      assert.equal(granted.status, 201);
      const read = await getClaim(app, granted.body.id);
      assert.equal(read.fencingToken, granted.body.fencingToken);
    }
    const after = await poolOf(app, "iad");
    assert.equal(after.claimed, before.claimed + 1, "only the first claim is still held");
  });
  await t.step("when the record cannot be read either, 503 and no second slot", async () => {
    const before = await poolOf(app, "iad");
    lost.arm("landed, retried");
    lost.failReads(1);
    const unknown = await claim(app, "iad", { holder: "unknown" });
    assertProblem(unknown, 503);
    assert.match(unknown.body.detail, /^Cannot tell whether the claim committed/);
    const after = await poolOf(app, "iad");
    assert.equal(after.claimed, before.claimed + 1, "the landed claim, and no other");
  });
  inner.close();
});
