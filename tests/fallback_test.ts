import assert from "node:assert/strict";
import { StatusApplier } from "../lib/applier.ts";
import { keys } from "../lib/keys.ts";
import { handleQueueMessage, type StatusBatchMessage } from "../lib/queue.ts";
import { evaluateEveryRegion, releaseWatch, takeWatch, watchRegions } from "../lib/region_watch.ts";
import { ingestStatus } from "../lib/status.ts";
import { claim, FakeClock, kvWith, makeApp, type TestApp, TOKENS } from "./_helpers.ts";

const LAG = { enterMs: 2000, exitMs: 500 };

/** fra (the backup) and iad (backed up by fra), each with `count` single-slot resources. */
async function twoRegions(t: TestApp, count = 5): Promise<void> {
  await t.request("PUT", "/v1/regions/fra", { body: { lag: LAG } });
  await t.request("PUT", "/v1/regions/iad", { body: { backup: "fra", lag: LAG } });
  for (const region of ["iad", "fra"]) {
    for (let i = 0; i < count; i++) {
      const res = await t.request("PUT", `/v1/regions/${region}/resources/${region}-${i}`, {
        body: {},
      });
      assert.equal(res.status, 201);
    }
  }
}

/** Enqueues one status update for a region without applying it: lag starts now. */
async function stall(t: TestApp, region: string, seq = 1): Promise<StatusBatchMessage[]> {
  const update = { resource: `${region}-0`, seq, state: "ready" as const };
  return (await ingestStatus(t.kv, t.clock, region, [update])).messages;
}

const health = async (t: TestApp, region: string) =>
  (await t.request("GET", `/v1/regions/${region}`)).body;

Deno.test("lag above enterMs switches a region to its backup; below exitMs it returns", async (t) => {
  await using app = await makeApp();
  await twoRegions(app);
  const before = await claim(app, "iad", { holder: "early", leaseMs: 600_000 });
  assert.equal(before.body.servedBy, "iad");

  const pending = await stall(app, "iad");
  app.clock.advance(LAG.enterMs);
  assert.equal((await health(app, "iad")).mode, "primary", "at enterMs exactly: not yet");
  app.clock.advance(1);

  await t.step("one evaluation past enterMs enters fallback", async () => {
    const h = await health(app, "iad");
    assert.equal(h.mode, "fallback");
    assert.equal(h.lagMs, LAG.enterMs + 1);
    assert.equal(h.modeHistory.length, 1);
    assert.match(h.modeHistory[0].reason, /enterMs/);
  });

  await t.step("new claims are served from the backup's pool, and say so", async () => {
    const res = await claim(app, "iad", { holder: "during" });
    assert.equal(res.status, 201);
    assert.equal(res.body.region, "iad");
    assert.equal(res.body.servedBy, "fra");
    assert.equal(res.body.mode, "fallback");
    assert.match(res.body.resource, /^fra-/);
    assert.equal(res.headers.get("allot-served-by"), "fra");
    const read = await app.request("GET", `/v1/claims/${res.body.id}`, { token: TOKENS.client });
    assert.equal(read.body.servedBy, "fra");
    assert.equal((await health(app, "fra")).claimed, 1);
  });

  await t.step("leases in the lagging region are untouched", async () => {
    const renewed = await app.request("POST", `/v1/claims/${before.body.id}/renew`, {
      token: TOKENS.client,
      body: {},
      headers: { "allot-claim-secret": before.body.secret },
    });
    assert.equal(renewed.status, 200);
    assert.equal((await health(app, "iad")).claimed, 1);
  });

  await t.step("once applied, lag falls below exitMs and the region is primary again", async () => {
    await new StatusApplier(app.kv, app.clock).apply(pending);
    const h = await health(app, "iad");
    assert.equal(h.mode, "primary");
    assert.equal(h.lagMs, 0);
    assert.deepEqual(h.modeHistory.map((c: { to: string }) => c.to), ["fallback", "primary"]);
    const res = await claim(app, "iad", { holder: "after" });
    assert.equal(res.body.servedBy, "iad");
  });
});

/**
 * Keeps a region's lag between 800 and 1600 ms for `cycles` evaluations: two messages
 * staggered by 800 ms, the older applied after each evaluation.
 */
async function oscillate(app: TestApp, region: string, cycles: number): Promise<number[]> {
  const applier = new StatusApplier(app.kv, app.clock);
  const seen: number[] = [];
  let seq = 100;
  let older = await stall(app, region, seq++);
  app.clock.advance(800);
  for (let i = 0; i < cycles; i++) {
    const newer = await stall(app, region, seq++);
    app.clock.advance(800);
    seen.push((await health(app, region)).lagMs);
    await applier.apply(older);
    seen.push((await health(app, region)).lagMs);
    older = newer;
  }
  return seen;
}

Deno.test("lag oscillating between exitMs and enterMs never flaps the mode", async (t) => {
  await t.step("from primary: 60 cycles, no change", async () => {
    await using app = await makeApp();
    await twoRegions(app);
    const lags = await oscillate(app, "iad", 60);
    assert.ok(lags.every((l) => l > LAG.exitMs && l <= LAG.enterMs), `lags ${lags}`);
    const h = await health(app, "iad");
    assert.equal(h.mode, "primary");
    assert.deepEqual(h.modeHistory, []);
  });
  await t.step("from fallback: 60 cycles, no change", async () => {
    await using app = await makeApp();
    await twoRegions(app);
    const first = await stall(app, "iad", 1);
    app.clock.advance(LAG.enterMs + 500);
    assert.equal((await health(app, "iad")).mode, "fallback");
    const lags = await oscillate(app, "iad", 60);
    await new StatusApplier(app.kv, app.clock).apply(first);
    assert.ok(lags.every((l) => l > LAG.exitMs), `lags ${lags}`);
    const h = await health(app, "iad");
    assert.equal(h.mode, "fallback");
    assert.equal(h.modeHistory.length, 1);
  });
});

Deno.test("fallback is refused when the backup lags or is exhausted, and the answer says who served", async (t) => {
  await t.step("backup exhausted: the region stays primary and serves, stale", async () => {
    await using app = await makeApp();
    await twoRegions(app, 2);
    for (let i = 0; i < 2; i++) assert.equal((await claim(app, "fra")).status, 201);
    await stall(app, "iad");
    app.clock.advance(3000);
    assert.equal((await health(app, "iad")).mode, "primary");
    const res = await claim(app, "iad");
    assert.equal(res.status, 201);
    assert.equal(res.body.servedBy, "iad");
    assert.equal(res.body.lagMs, 3000, "the answer says how stale its pool view was");
    assert.equal(res.body.mode, "primary");
    assert.match(res.body.note, /fallback refused \(backup "fra" has no free slot\)/);
  });
  await t.step("backup lagging too: no fallback", async () => {
    await using app = await makeApp();
    await twoRegions(app);
    await stall(app, "fra");
    await stall(app, "iad");
    app.clock.advance(3000);
    assert.equal((await health(app, "iad")).mode, "primary");
    const res = await claim(app, "iad");
    assert.equal(res.body.servedBy, "iad", "equally stale: the region's own pool");
    assert.match(res.body.note, /fallback refused \(backup "fra" lags 3000ms\)/);
  });
  await t.step(
    "the less stale pool serves, whether or not the region entered fallback",
    async () => {
      // iad lags 10 s, fra 3 s. Whether iad was evaluated while fra was still fresh (so it
      // entered fallback) or not (it stays primary: fallback was refused), fra serves.
      for (const looked of [true, false]) {
        await using app = await makeApp();
        await twoRegions(app);
        await stall(app, "iad");
        app.clock.advance(7000);
        if (looked) assert.equal((await health(app, "iad")).mode, "fallback");
        await stall(app, "fra");
        app.clock.advance(3000);
        const res = await claim(app, "iad");
        assert.equal(res.status, 201);
        assert.deepEqual(
          [res.body.mode, res.body.servedBy, res.body.lagMs],
          [looked ? "fallback" : "primary", "fra", 3000],
        );
        assert.match(res.body.note, /fallback refused \(backup "fra" lags 3000ms\)/);
      }
    },
  );
  await t.step("in fallback, a backup that runs out hands claims back to the region", async () => {
    await using app = await makeApp();
    await twoRegions(app, 2);
    await stall(app, "iad");
    app.clock.advance(3000);
    assert.equal((await health(app, "iad")).mode, "fallback");
    assert.equal((await claim(app, "iad")).body.servedBy, "fra");
    assert.equal((await claim(app, "iad")).body.servedBy, "fra");
    const third = await claim(app, "iad");
    assert.equal(third.status, 201);
    assert.equal(third.body.servedBy, "iad");
    assert.equal(third.body.mode, "fallback");
    assert.match(third.body.note, /fallback refused .*no free slot/);
  });
});

Deno.test("200 concurrent claims through two app instances during repeated switchovers never double-allocate", async () => {
  const kv = await Deno.openKv(":memory:");
  await using one = await makeApp({ kv });
  await using two = await makeApp({ kv, clock: one.clock });
  await twoRegions(one, 150);
  const applier = new StatusApplier(kv, one.clock);
  const pendingWaves: StatusBatchMessage[][] = [];
  const grants: Array<{ servedBy: string; resource: string; slot: number }> = [];
  let seq = 1;
  let statuses: number[] = [];
  for (let wave = 0; wave < 10; wave++) {
    const flip = (async () => {
      if (wave % 2 === 0) {
        const messages = await stall(one, "iad", seq++);
        one.clock.advance(2500);
        await one.request("GET", "/v1/regions/iad");
        pendingWaves.push(messages);
      } else {
        await applier.apply(pendingWaves.splice(0).flat());
      }
    })();
    const results = await Promise.all([
      ...Array.from(
        { length: 20 },
        (_, i) => claim(i % 2 ? one : two, "iad", { holder: `w${wave}-${i}` }),
      ),
      flip.then(() => null),
    ]);
    for (const res of results) {
      if (res === null) continue;
      statuses.push(res.status);
      if (res.status === 201) grants.push(res.body);
    }
  }
  statuses = [...new Set(statuses)];
  assert.deepEqual(statuses, [201], "300 slots: every one of the 200 claims is served");
  const slots = grants.map((g) => `${g.servedBy}/${g.resource}/${g.slot}`);
  assert.equal(new Set(slots).size, slots.length, "no slot granted twice");
  const served = new Set(grants.map((g) => g.servedBy));
  assert.deepEqual([...served].sort(), ["fra", "iad"], "both pools served during the run");
  const iad = await health(one, "iad");
  const fra = await health(one, "fra");
  assert.equal(iad.claimed + fra.claimed, grants.length);
  assert.equal(iad.free + fra.free, 300 - grants.length);
  kv.close();
});

Deno.test("a consumer delayed for one region (fault seam) drives it to fallback and back, end to end", async () => {
  const kv = await Deno.openKv(":memory:");
  await using app = await makeApp({ kv });
  await twoRegions(app);
  let open!: () => void;
  const gate = new Promise<void>((resolve) => open = resolve);
  const applier = new StatusApplier(kv, app.clock, {
    faults: { beforeCommit: (regions) => regions.has("iad") ? gate : undefined },
  });
  const listening = kv.listenQueue(async (message) => {
    await handleQueueMessage({ kv, clock: app.clock, applier }, message);
  });
  const posted = await app.request("POST", "/v1/regions/iad/status", {
    token: TOKENS.agent,
    body: { updates: [{ resource: "iad-0", seq: 1, state: "ready", load: 1 }] },
  });
  assert.equal(posted.status, 202);
  app.clock.advance(LAG.enterMs + 1);
  assert.equal((await health(app, "iad")).mode, "fallback");
  assert.equal((await claim(app, "iad")).body.servedBy, "fra");

  open();
  let mode = "fallback";
  for (let i = 0; i < 200 && mode !== "primary"; i++) {
    await new Promise((r) => setTimeout(r, 20));
    mode = (await health(app, "iad")).mode;
  }
  assert.equal(mode, "primary", "the delayed batch applied, lag fell below exitMs");
  assert.equal((await claim(app, "iad")).body.servedBy, "iad");
  kv.close();
  await listening;
});

Deno.test("a region-scoped token lists only the claims it may read, also of a pool serving another region", async () => {
  await using app = await makeApp();
  await twoRegions(app);
  const own = await app.request("POST", "/v1/regions/fra/claims", {
    token: TOKENS.clientFra,
    body: { holder: "fra-holder" },
  });
  assert.equal(own.status, 201);
  await stall(app, "iad");
  app.clock.advance(LAG.enterMs + 1);
  const borrowed = await claim(app, "iad", { holder: "iad-holder" });
  assert.equal(borrowed.body.servedBy, "fra", "iad in fallback is served by fra's pool");

  const listed = async (token: string) =>
    (await app.request("GET", "/v1/regions/fra/claims", { token })).body.items
      .map((c: { holder: string }) => c.holder).sort();
  assert.deepEqual(await listed(TOKENS.client), ["fra-holder", "iad-holder"]);
  assert.deepEqual(await listed(TOKENS.clientFra), ["fra-holder"], "not a claim asked in iad");
  const read = await app.request("GET", `/v1/claims/${borrowed.body.id}`, {
    token: TOKENS.clientFra,
  });
  assert.equal(read.status, 403, "which it may not read either");
});

Deno.test("a region whose queue stalls, with no claim or read, moves to fallback by the region watch", async (t) => {
  await using app = await makeApp();
  await twoRegions(app);
  await app.request("PUT", "/v1/regions/lone", { body: { lag: LAG } });
  const pending = await stall(app, "iad");
  app.clock.advance(LAG.enterMs + 1);
  const crossedAt = app.clock.now();

  await t.step("one pass switches it when the lag crosses, and dates the switch then", async () => {
    assert.equal(await evaluateEveryRegion(app.kv, app.clock), 0);
    app.clock.advance(60_000);
    const h = await health(app, "iad");
    assert.equal(h.mode, "fallback");
    assert.equal(h.modeSince, new Date(crossedAt).toISOString(), "switched by the pass");
    assert.equal(h.modeHistory[0].lagMs, LAG.enterMs + 1);
    assert.equal((await health(app, "fra")).mode, "primary", "regions without lag stay");
  });

  await t.step("once applied, the next pass brings it back", async () => {
    await new StatusApplier(app.kv, app.clock).apply(pending);
    const returnedAt = app.clock.now();
    await evaluateEveryRegion(app.kv, app.clock);
    app.clock.advance(1_000);
    const h = await health(app, "iad");
    assert.equal(h.mode, "primary");
    assert.equal(h.modeSince, new Date(returnedAt).toISOString());
  });

  await t.step("watchRegions runs passes on its timer until stopped", async () => {
    await stall(app, "iad", 2);
    // Reads (at the app's clock) see a lag between exitMs and enterMs, which changes no
    // mode either way; only the watch, whose clock is past enterMs, can switch it.
    app.clock.advance(1_000);
    const watchClock = new FakeClock(app.clock.now() + LAG.enterMs);
    const watch = watchRegions(app.kv, watchClock, 1);
    try {
      const deadline = Date.now() + 10_000;
      while ((await health(app, "iad")).mode !== "fallback" && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    } finally {
      await watch.stop();
    }
    const h = await health(app, "iad");
    assert.equal(h.mode, "fallback");
    assert.equal(h.modeSince, new Date(watchClock.now()).toISOString(), "switched by the watch");
  });
});

Deno.test("the region watch ends by itself once its KV handle is closed", async () => {
  const kv = await Deno.openKv(":memory:");
  const reads: string[] = [];
  const counting = kvWith(kv, {
    get: (...args) => (reads.push("get"), kv.get(...args)),
    list: (...args) => (reads.push("list"), kv.list(...args)),
  });
  kv.close();
  const watch = watchRegions(counting, new FakeClock(), 1);
  try {
    const deadline = Date.now() + 10_000;
    while (reads.length === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(reads.length, 1, "one pass found the handle closed, and no pass followed");
  } finally {
    await watch.stop();
  }
});

Deno.test("one process holds the region watch at a time; another takes over once it lapses", async (t) => {
  await using app = await makeApp();
  const { kv, clock } = app;
  const until = () => clock.now() + 15_000;

  await t.step("of ten racing for a free watch, exactly one gets it", async () => {
    const won = await Promise.all(
      Array.from({ length: 10 }, (_, i) => takeWatch(kv, clock, `p${i}`, until())),
    );
    assert.equal(won.filter(Boolean).length, 1);
  });

  await t.step("its holder keeps it; the others wait until it lapses", async () => {
    await kv.delete(keys.regionWatch());
    assert.equal(await takeWatch(kv, clock, "a", until()), true);
    assert.equal(await takeWatch(kv, clock, "b", until()), false);
    clock.advance(5_000);
    assert.equal(await takeWatch(kv, clock, "a", until()), true, "renewed");
    clock.advance(14_999);
    assert.equal(await takeWatch(kv, clock, "b", until()), false, "not lapsed yet");
    clock.advance(1);
    assert.equal(await takeWatch(kv, clock, "b", until()), true, "lapsed: b takes over");
    assert.equal(await takeWatch(kv, clock, "a", until()), false);
  });

  await t.step("only its holder gives it up; then another takes it at once", async () => {
    await releaseWatch(kv, "a");
    assert.equal(await takeWatch(kv, clock, "a", until()), false, "a did not hold it");
    await releaseWatch(kv, "b");
    assert.equal(await takeWatch(kv, clock, "a", until()), true);
  });

  await t.step("a stopped watch gives it up, so a process started next need not wait", async () => {
    await releaseWatch(kv, "a");
    const watch = watchRegions(kv, clock, 1);
    const deadline = Date.now() + 10_000;
    while ((await kv.get(keys.regionWatch())).value === null && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.notEqual((await kv.get(keys.regionWatch())).value, null, "it took the watch");
    await watch.stop();
    assert.equal((await kv.get(keys.regionWatch())).value, null);
    assert.equal(await takeWatch(kv, clock, "next", until()), true);
  });
});

Deno.test("a pass asked to stop ends at its next region", async () => {
  await using app = await makeApp();
  await twoRegions(app, 1);
  await stall(app, "iad");
  // Reads at the app's clock see a lag that switches nothing; the passes' clock is past enterMs.
  app.clock.advance(1_000);
  const passClock = new FakeClock(app.clock.now() + LAG.enterMs);
  let asked = 0;
  await evaluateEveryRegion(app.kv, passClock, () => ++asked > 1); // stops before "iad"
  assert.equal((await health(app, "iad")).mode, "primary", "iad was not evaluated");
  await evaluateEveryRegion(app.kv, passClock);
  assert.equal((await health(app, "iad")).mode, "fallback", "a whole pass reaches it");
});

Deno.test("replacing a region's configuration does not move the date of its mode", async () => {
  await using app = await makeApp();
  const createdAt = new Date(app.clock.now()).toISOString();
  assert.equal((await app.request("PUT", "/v1/regions/fra", { body: {} })).status, 201);
  assert.equal((await app.request("PUT", "/v1/regions/iad", { body: {} })).status, 201);
  app.clock.advance(60_000);
  const replaced = await app.request("PUT", "/v1/regions/iad", { body: { backup: "fra" } });
  assert.equal(replaced.status, 200);
  const read = await app.request("GET", "/v1/regions/iad");
  assert.deepEqual([read.body.mode, read.body.modeSince, read.body.modeReason], [
    "primary",
    createdAt,
    "created",
  ]);
  assert.equal(read.body.updatedAt, new Date(app.clock.now()).toISOString());

  // A configuration stored before `createdAt` existed keeps the date it showed, its last update.
  const legacy = await app.kv.get<Record<string, unknown>>(keys.regionConfig("fra"));
  const { createdAt: _, ...withoutCreatedAt } = legacy.value!;
  await app.kv.set(keys.regionConfig("fra"), withoutCreatedAt);
  const shown = (await app.request("GET", "/v1/regions/fra")).body.modeSince;
  for (let i = 0; i < 2; i++) {
    app.clock.advance(60_000);
    assert.equal((await app.request("PUT", "/v1/regions/fra", { body: {} })).status, 200);
    assert.equal((await app.request("GET", "/v1/regions/fra")).body.modeSince, shown);
  }
});

/** fra with one plain resource; iad (backed up by fra) with one gpu=a100 resource. */
async function gpuRegions(t: TestApp) {
  await t.request("PUT", "/v1/regions/fra", { body: { lag: LAG } });
  await t.request("PUT", "/v1/regions/iad", { body: { backup: "fra", lag: LAG } });
  // fra has free slots, but none carrying gpu=a100; iad has one that does.
  assert.equal(
    (await t.request("PUT", "/v1/regions/fra/resources/fra-0", { body: {} })).status,
    201,
  );
  assert.equal(
    (await t.request("PUT", "/v1/regions/iad/resources/iad-gpu", {
      body: { labels: { gpu: "a100" } },
    }))
      .status,
    201,
  );
}

Deno.test("a fallback claim the backup cannot match, served by the lagging region, reports that region's lag", async () => {
  await using app = await makeApp();
  await gpuRegions(app);
  await ingestStatus(app.kv, app.clock, "iad", [{ resource: "iad-gpu", seq: 1, state: "ready" }]);
  app.clock.advance(3000);
  assert.equal((await health(app, "iad")).mode, "fallback");
  const res = await claim(app, "iad", { holder: "h", labels: { gpu: "a100" } });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  assert.equal(res.body.servedBy, "iad");
  // iad's pool view is 3000 ms stale: the answer must say so, not claim a fresh view.
  assert.equal(
    res.body.lagMs,
    3000,
    `answer: ${JSON.stringify({ lagMs: res.body.lagMs, note: res.body.note })}`,
  );
});

Deno.test("in fallback, a backup whose only slot's lease ran out (its sweep not yet delivered) still serves", async () => {
  await using app = await makeApp();
  await twoRegions(app, 1);
  // iad's status queue lags: it falls back to fra. (The expiry sweeps ride the same queue,
  // so, as here where no queue is delivered, they are late too.)
  await stall(app, "iad");
  app.clock.advance(3000);
  assert.equal((await health(app, "iad")).mode, "fallback");
  const short = await claim(app, "iad", { holder: "short", leaseMs: 1000 });
  assert.equal(short.body.servedBy, "fra");
  const long = await claim(app, "iad", { holder: "long", leaseMs: 600_000 });
  assert.equal(long.body.servedBy, "iad");
  app.clock.advance(1001); // fra's lease has run out; its slot is claimable again
  const res = await claim(app, "iad", { holder: "next" });
  assert.equal(
    res.status,
    201,
    `iad (in fallback) answered ${res.status} Retry-After ${
      res.headers.get("retry-after")
    }: ${res.body.detail}`,
  );
  assert.equal(res.body.servedBy, "fra");
});

Deno.test("in fallback, a 503's Retry-After counts the backup's soonest expiry too", async () => {
  await using app = await makeApp();
  await twoRegions(app, 1);
  await stall(app, "iad");
  app.clock.advance(3000);
  assert.equal((await health(app, "iad")).mode, "fallback");
  assert.equal((await claim(app, "iad", { holder: "a", leaseMs: 2000 })).body.servedBy, "fra");
  assert.equal((await claim(app, "iad", { holder: "b", leaseMs: 600_000 })).body.servedBy, "iad");
  const full = await claim(app, "iad", { holder: "c" });
  assert.equal(full.status, 503);
  // fra's slot is free again in 2 s, and a claim for iad then takes it.
  assert.ok(
    Number(full.headers.get("retry-after")) <= 2,
    `Retry-After: ${full.headers.get("retry-after")} (fra's lease ends in 2 s)`,
  );
});

Deno.test("a region in fallback whose backup is replaced moves to the new one and says so", async () => {
  await using app = await makeApp();
  for (const r of ["fra", "lhr"]) {
    await app.request("PUT", `/v1/regions/${r}`, { body: { lag: LAG } });
    await app.request("PUT", `/v1/regions/${r}/resources/${r}-0`, { body: {} });
  }
  await app.request("PUT", "/v1/regions/iad", { body: { backup: "fra", lag: LAG } });
  await ingestStatus(app.kv, app.clock, "iad", [{ resource: "x", seq: 1, state: "ready" }]);
  app.clock.advance(3000);
  assert.equal((await health(app, "iad")).mode, "fallback");
  const put = await app.request("PUT", "/v1/regions/iad", { body: { backup: "lhr", lag: LAG } });
  assert.equal(put.status, 200);
  const granted = await claim(app, "iad");
  assert.equal(granted.body.servedBy, "lhr");
  const view = await health(app, "iad");
  assert.doesNotMatch(view.modeReason, /"fra"/, `modeReason: ${view.modeReason}`);
});

Deno.test("a lagging region does not enter fallback on a backup whose only overdue lease frees nothing claimable", async () => {
  await using app = await makeApp();
  await twoRegions(app, 1);
  // fra's only slot is held by a short lease, then its resource drains: sweeping that lease
  // frees nothing claimable.
  assert.equal((await claim(app, "fra", { holder: "x", leaseMs: 1000 })).status, 201);
  const drained = await app.request("PUT", "/v1/regions/fra/resources/fra-0", {
    body: { state: "draining" },
  });
  assert.equal(drained.status, 200);
  await stall(app, "iad");
  app.clock.advance(3000); // iad lags 3000 ms; fra's lease is overdue, its sweep not delivered
  const view = await health(app, "iad");
  // SPEC: "Fallback is refused when the backup is itself lagging or exhausted".
  assert.equal(view.mode, "primary", `mode ${view.mode}: ${view.modeReason}`);
});

Deno.test("a lagging region in primary keeps its claims when its full backup has a lease past its expiry", async () => {
  await using app = await makeApp();
  await twoRegions(app, 1);
  assert.equal((await claim(app, "fra", { holder: "x", leaseMs: 1000 })).status, 201);
  await stall(app, "iad");
  app.clock.advance(3000); // iad lags; fra's only slot is held by a lease not yet swept
  const granted = await claim(app, "iad");
  assert.equal(granted.status, 201, JSON.stringify(granted.body));
  assert.deepEqual([granted.body.servedBy, granted.body.mode], ["iad", "primary"]);
  assert.match(granted.body.note, /^fallback refused \(backup "fra" has no free slot\)/);
});

Deno.test("a scoped token refused a claim its pool serves for a region outside its scope is not told that region's name", async () => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/fra", { body: { lag: LAG } });
  await app.request("PUT", "/v1/regions/secret-gpu", { body: { backup: "fra", lag: LAG } });
  for (const r of ["fra", "secret-gpu"]) {
    await app.request("PUT", `/v1/regions/${r}/resources/${r}-0`, { body: {} });
  }
  await stall(app, "secret-gpu");
  app.clock.advance(3000); // secret-gpu falls back: its claim is served by fra's pool
  const held = (await claim(app, "secret-gpu", { holder: "h" })).body;
  assert.equal(held.servedBy, "fra");
  for (
    const [token, method, path, body, headers] of [
      [TOKENS.clientFra, "GET", `/v1/claims/${held.id}`, undefined, {}],
      [TOKENS.clientFra, "DELETE", `/v1/claims/${held.id}`, undefined, {
        "allot-claim-secret": held.secret,
      }],
      [TOKENS.adminFra, "POST", `/v1/claims/${held.id}/revoke`, { reason: "x" }, {}],
    ] as const
  ) {
    const res = await app.request(method, path, { token, body, headers });
    assert.equal(res.status, 403);
    assert.equal(res.body.detail, `This token may not act on claim "${held.id}"`, method);
  }
});
