import assert from "node:assert/strict";
import {
  deleteResource,
  finishLeaseLosses,
  loseLeases,
  putResource as putSpec,
} from "../lib/resources.ts";
import { keys } from "../lib/keys.ts";
import { StatusApplier } from "../lib/applier.ts";
import { ingestStatus } from "../lib/status.ts";
import {
  assertProblem,
  claim,
  claimAll,
  getClaim,
  kvWith,
  makeApp,
  poolOf,
  racingApps,
  release,
  renew,
  seedRegion,
  type TestApp,
  TOKENS,
} from "./_helpers.ts";

function putResource(t: TestApp, id: string, body: Record<string, unknown>, region = "iad") {
  return t.request("PUT", `/v1/regions/${region}/resources/${id}`, { token: TOKENS.agent, body });
}

async function resourceOf(t: TestApp, id: string) {
  const res = await t.request("GET", `/v1/regions/iad/resources/${id}`, { token: TOKENS.client });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

Deno.test("draining a held resource never frees its slot", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  const a = await claim(app, "iad", { holder: "a" });
  assert.equal(a.status, 201);

  await t.step("draining: not claimable, the holder keeps its lease", async () => {
    const drained = await putResource(app, "res-0000", { state: "draining" });
    assert.equal(drained.status, 200, JSON.stringify(drained.body));
    assert.equal(drained.body.claimed, 1);
    assertProblem(await claim(app, "iad", { holder: "b" }), 503);
    assert.equal((await getClaim(app, a.body.id)).state, "active");
    assert.equal((await renew(app, a.body.id, a.body.secret)).status, 200);
    assert.deepEqual(await poolOf(app, "iad"), { free: 0, claimed: 1, total: 1 });
  });

  await t.step("ready again while held: still only the holder has it", async () => {
    assert.equal((await putResource(app, "res-0000", { state: "ready" })).status, 200);
    assertProblem(await claim(app, "iad", { holder: "b" }), 503);
    assert.equal((await resourceOf(app, "res-0000")).claimed, 1);
    assert.deepEqual(await poolOf(app, "iad"), { free: 0, claimed: 1, total: 1 });
  });

  await t.step("the holder's release frees it for the next claim", async () => {
    assert.equal((await release(app, a.body.id, a.body.secret)).status, 204);
    const b = await claim(app, "iad", { holder: "b" });
    assert.equal(b.status, 201);
    assert.ok(b.body.fencingToken > a.body.fencingToken);
  });
});

Deno.test("a release while draining does not free the slot; ready does", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 1);
  const a = await claim(t, "iad", { holder: "a" });
  await putResource(t, "res-0000", { state: "draining" });
  assert.equal((await release(t, a.body.id, a.body.secret)).status, 204);
  assertProblem(await claim(t, "iad", { holder: "b" }), 503);
  assert.deepEqual(await poolOf(t, "iad"), { free: 0, claimed: 0, total: 1 });
  await putResource(t, "res-0000", { state: "ready" });
  assert.deepEqual(await poolOf(t, "iad"), { free: 1, claimed: 0, total: 1 });
  assert.equal((await claim(t, "iad", { holder: "b" })).status, 201);
});

Deno.test("shrinking slots keeps held leases and never re-frees removed slots", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 1, { slots: 4 });
  const bySlot = new Map<number, { id: string; secret: string }>();
  for (let i = 0; i < 4; i++) {
    const res = await claim(t, "iad", { holder: `h${i}` });
    bySlot.set(res.body.slot, res.body);
  }
  assert.deepEqual([...bySlot.keys()].sort(), [0, 1, 2, 3]);
  for (const slot of [0, 1]) {
    assert.equal((await release(t, bySlot.get(slot)!.id, bySlot.get(slot)!.secret)).status, 204);
  }

  const shrunk = await putResource(t, "res-0000", { slots: 1 });
  assert.equal(shrunk.status, 200);
  assert.deepEqual(await poolOf(t, "iad"), { free: 1, claimed: 2, total: 1 });
  for (const slot of [2, 3]) {
    const held = bySlot.get(slot)!;
    assert.equal((await getClaim(t, held.id)).state, "active");
    assert.equal((await renew(t, held.id, held.secret)).status, 200);
  }

  assert.equal((await release(t, bySlot.get(2)!.id, bySlot.get(2)!.secret)).status, 204);
  assert.deepEqual(await poolOf(t, "iad"), { free: 1, claimed: 1, total: 1 });
  const only = await claimAll(t, "iad");
  assert.deepEqual(only.map((g) => g.slot), [0], "only slot 0 is claimable");
  assert.equal((await release(t, bySlot.get(3)!.id, bySlot.get(3)!.secret)).status, 204);
  assertProblem(await claim(t, "iad", { holder: "x" }), 503);
  assert.equal((await resourceOf(t, "res-0000")).claimed, 1);

  // Growing back frees exactly the slots nobody holds.
  assert.equal((await putResource(t, "res-0000", { slots: 4 })).status, 200);
  const regrown = await claimAll(t, "iad");
  assert.deepEqual(regrown.map((g) => g.slot).sort(), [1, 2, 3]);
  assert.deepEqual(await poolOf(t, "iad"), { free: 0, claimed: 4, total: 4 });
});

Deno.test("gone and DELETE make live leases lost", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 2, { slots: 2 });

  await t.step("state gone", async () => {
    const a = await claim(app, "iad", { holder: "a", labels: {} });
    const id = a.body.resource;
    const gone = await putResource(app, id, { slots: 2, state: "gone" });
    assert.equal(gone.status, 200);
    const read = await getClaim(app, a.body.id);
    assert.equal(read.state, "lost");
    assert.match(read.reason, /gone/);
    assertProblem(await renew(app, a.body.id, a.body.secret), 409);
    assertProblem(await release(app, a.body.id, a.body.secret), 409);
    assert.deepEqual(await poolOf(app, "iad"), { free: 2, claimed: 0, total: 2 });
    const others = await claimAll(app, "iad");
    assert.ok(others.every((g) => g.resource !== id), "a gone resource is not claimable");
    for (const g of others) await release(app, g.id, g.secret);

    assert.equal((await putResource(app, id, { slots: 2, state: "ready" })).status, 200);
    const back = await claimAll(app, "iad");
    assert.equal(back.filter((g) => g.resource === id).length, 2);
    assert.ok(back.every((g) => g.fencingToken > a.body.fencingToken));
    for (const g of back) await release(app, g.id, g.secret);
  });

  await t.step("DELETE", async () => {
    const a = await claim(app, "iad", { holder: "a" });
    const id = a.body.resource;
    const deleted = await app.request("DELETE", `/v1/regions/iad/resources/${id}`, {
      token: TOKENS.agent,
    });
    assert.equal(deleted.status, 200, JSON.stringify(deleted.body));
    const read = await getClaim(app, a.body.id);
    assert.equal(read.state, "lost");
    assertProblem(await renew(app, a.body.id, a.body.secret), 409);
    assertProblem(await release(app, a.body.id, a.body.secret), 409);
    const missing = await app.request("GET", `/v1/regions/iad/resources/${id}`);
    assertProblem(missing, 404);
    assertProblem(await app.request("DELETE", `/v1/regions/iad/resources/${id}`), 404);
    assert.deepEqual(await poolOf(app, "iad"), { free: 2, claimed: 0, total: 2 });
    const rest = await claimAll(app, "iad");
    assert.ok(rest.every((g) => g.resource !== id));
    for (const g of rest) await release(app, g.id, g.secret);
  });

  await t.step("a lease already past its expiry is expired, not lost", async () => {
    const a = await claim(app, "iad", { holder: "a", leaseMs: 1000 });
    app.clock.advance(1000); // expired; the sweep has not run yet
    const gone = await putResource(app, a.body.resource, { slots: 2, state: "gone" });
    assert.equal(gone.status, 200);
    const read = await getClaim(app, a.body.id);
    assert.equal(read.state, "expired");
    assert.equal(read.reason, "lease expired");
    assert.deepEqual(await poolOf(app, "iad"), { free: 0, claimed: 0, total: 0 });
  });
});

Deno.test("claims with labels only get matching resources", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 0);
  await putResource(t, "chrome-1", { labels: { browser: "chromium" } });
  await putResource(t, "chrome-gpu", { labels: { browser: "chromium", gpu: "yes" } });
  await putResource(t, "firefox-1", { labels: { browser: "firefox" } });

  const ff = await claim(t, "iad", { holder: "h", labels: { browser: "firefox" } });
  assert.equal(ff.body.resource, "firefox-1");
  const noFf = await claim(t, "iad", { holder: "h", labels: { browser: "firefox" } });
  assertProblem(noFf, 503);
  assert.match(noFf.body.detail, /label/);

  const gpu = await claim(t, "iad", { holder: "h", labels: { gpu: "yes", browser: "chromium" } });
  assert.equal(gpu.body.resource, "chrome-gpu");
  assertProblem(await claim(t, "iad", { holder: "h", labels: { gpu: "yes" } }), 503);
  assertProblem(await claim(t, "iad", { holder: "h", labels: { browser: "safari" } }), 503);
  assertProblem(await claim(t, "iad", { holder: "h", labels: { browser: "Chromium" } }), 503);

  const any = await claim(t, "iad", { holder: "h" });
  assert.equal(any.body.resource, "chrome-1");

  // Relabelling applies to free slots at once and to held ones when they come back.
  await release(t, ff.body.id, ff.body.secret);
  await putResource(t, "firefox-1", { labels: { browser: "firefox", esr: "128" } });
  await putResource(t, "chrome-1", { labels: { browser: "firefox" } });
  await release(t, any.body.id, any.body.secret);
  const relabelled = await claimAll(t, "iad", {
    holder: "h",
    labels: { browser: "firefox" },
  });
  assert.deepEqual(relabelled.map((g) => g.resource).sort(), ["chrome-1", "firefox-1"]);
});

Deno.test("spec changes racing lease ends and claims keep the pool exact", async (t) => {
  await t.step("a release lands between a draining -> ready change's read and commit", async () => {
    await using r = await racingApps();
    await seedRegion(r.racer, "iad", 1);
    const a = await claim(r.racer, "iad", { holder: "a" });
    await putResource(r.racer, "res-0000", { state: "draining" });
    r.hook.arm(async () => {
      assert.equal((await release(r.racer, a.body.id, a.body.secret)).status, 204);
    });
    assert.equal((await putResource(r.subject, "res-0000", { state: "ready" })).status, 200);
    assert.ok(r.hook.fired());
    // The slot is neither held nor lost: exactly one claim gets it.
    assert.deepEqual(await poolOf(r.racer, "iad"), { free: 1, claimed: 0, total: 1 });
    assert.equal((await claimAll(r.racer, "iad")).length, 1);
  });

  await t.step("a ready -> draining change lands between a release's read and commit", async () => {
    await using r = await racingApps();
    await seedRegion(r.racer, "iad", 1);
    const a = await claim(r.racer, "iad", { holder: "a" });
    r.hook.arm(async () => {
      assert.equal((await putResource(r.racer, "res-0000", { state: "draining" })).status, 200);
    });
    assert.equal((await release(r.subject, a.body.id, a.body.secret)).status, 204);
    assert.ok(r.hook.fired());
    assert.deepEqual(await poolOf(r.racer, "iad"), { free: 0, claimed: 0, total: 1 });
    assertProblem(await claim(r.racer, "iad", { holder: "b" }), 503);
  });

  await t.step("a claim lands between a draining change's read and commit", async () => {
    await using r = await racingApps();
    await seedRegion(r.racer, "iad", 1, { slots: 2 });
    let taken: { id: string; secret: string; slot: number } | null = null;
    r.hook.arm(async () => {
      taken = (await claim(r.racer, "iad", { holder: "a" })).body;
    });
    assert.equal(
      (await putResource(r.subject, "res-0000", { slots: 2, state: "draining" })).status,
      200,
    );
    assert.ok(taken !== null);
    const held = taken as { id: string; secret: string };
    assert.equal((await getClaim(r.racer, held.id)).state, "active");
    assert.deepEqual(await poolOf(r.racer, "iad"), { free: 0, claimed: 1, total: 2 });
    assertProblem(await claim(r.racer, "iad", { holder: "b" }), 503);
    assert.equal((await release(r.racer, held.id, held.secret)).status, 204);
    assertProblem(await claim(r.racer, "iad", { holder: "b" }), 503);
  });

  await t.step("a claim lands between a shrink's read and commit", async () => {
    await using r = await racingApps();
    await seedRegion(r.racer, "iad", 1, { slots: 2 });
    let taken: { id: string; secret: string; slot: number } | null = null;
    r.hook.arm(async () => {
      taken = (await claim(r.racer, "iad", { holder: "a" })).body;
    });
    assert.equal((await putResource(r.subject, "res-0000", { slots: 1 })).status, 200);
    assert.ok(r.hook.fired());
    const held = taken! as { id: string; secret: string; slot: number };
    const expectFree = held.slot === 0 ? 0 : 1;
    assert.deepEqual(await poolOf(r.racer, "iad"), { free: expectFree, claimed: 1, total: 1 });
    const more = await claimAll(r.racer, "iad");
    assert.deepEqual(more.map((g) => g.slot), expectFree ? [0] : []);
    assert.ok(more.every((g) => g.slot !== held.slot));
  });

  await t.step("a claim lands between a relabel's read and commit", async () => {
    await using r = await racingApps();
    await seedRegion(r.racer, "iad", 1, { slots: 3, labels: { pool: "a" } });
    r.hook.arm(async () => {
      assert.equal(
        (await claim(r.racer, "iad", { holder: "h", labels: { pool: "a" } })).status,
        201,
      );
    });
    assert.equal(
      (await putResource(r.subject, "res-0000", { slots: 3, labels: { pool: "b" } })).status,
      200,
    );
    assert.ok(r.hook.fired());
    assertProblem(await claim(r.racer, "iad", { holder: "h", labels: { pool: "a" } }), 503);
    const relabelled = await claimAll(r.racer, "iad", { holder: "h", labels: { pool: "b" } });
    assert.equal(relabelled.length, 2);
    assert.deepEqual(await poolOf(r.racer, "iad"), { free: 0, claimed: 3, total: 3 });
  });
});

/**
 * Wraps `inner` so the `nth` listing of a resource's held slots first awaits `before`: the
 * moment between a DELETE's commit and its lease loss, held open (or cut short, when
 * `before` throws).
 */
function onSlotListing(inner: Deno.Kv, nth: number, before: () => Promise<void>): Deno.Kv {
  let listings = 0;
  return kvWith(inner, {
    list: (selector, options) => {
      const prefix = "prefix" in selector ? selector.prefix : [];
      if (prefix[2] !== "slot" || ++listings !== nth) return inner.list(selector, options);
      return (async function* () {
        await before();
        yield* inner.list(selector, options);
      })();
    },
  });
}

Deno.test("a DELETE's lease loss never reaches a claim made after it, on the resource registered again", async (t) => {
  await t.step(
    "over HTTP, with the re-registration and claim between the DELETE's commit and its lease loss",
    async () => {
      await using racer = await makeApp();
      await seedRegion(racer, "iad", 0);
      assert.equal((await putResource(racer, "r1", { slots: 2 })).status, 201);
      const old = await claim(racer, "iad", { holder: "old" });
      let open!: () => void;
      const gate = new Promise<void>((resolve) => open = resolve);
      // The DELETE's first listing reads the held slots it checks; its second is the lease loss.
      await using deleter = await makeApp({
        kv: onSlotListing(racer.kv, 2, () => gate),
        clock: racer.clock,
      });
      const deleting = deleter.request("DELETE", "/v1/regions/iad/resources/r1", {
        token: TOKENS.agent,
      });
      while ((await racer.request("GET", "/v1/regions/iad/resources/r1")).status !== 404) {
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
      // Its other slot is free again at once; the old lease's slot stays held until it is lost.
      assert.equal((await putResource(racer, "r1", { slots: 2 })).status, 201, "registered again");
      const fresh = await claim(racer, "iad", { holder: "new" });
      assert.equal(fresh.status, 201);
      open();
      assert.equal((await deleting).status, 200);
      assert.equal((await getClaim(racer, old.body.id)).state, "lost", "the DELETE's own lease");
      const after = await getClaim(racer, fresh.body.id);
      assert.deepEqual(
        [after.state, after.reason],
        ["active", null],
        "the later claim is untouched",
      );
    },
  );

  await t.step(
    "loseLeases() run late (as the status path's after-commit step may) spares slots taken after the change",
    async () => {
      await using app = await makeApp();
      await seedRegion(app, "iad", 0);
      await putResource(app, "r1", { slots: 2 });
      const before = await claim(app, "iad", { holder: "before" });
      const gone = await putResource(app, "r1", { slots: 2, state: "gone" });
      assert.match(gone.body.consistencyToken, /^[0-9a-f]{20}$/);
      assert.equal((await getClaim(app, before.body.id)).state, "lost");
      await putResource(app, "r1", { slots: 2, state: "ready" });
      const later = await claim(app, "iad", { holder: "later" });
      const lost = await loseLeases(
        app.kv,
        app.clock,
        "iad",
        "r1",
        "resource gone",
        gone.body.consistencyToken,
      );
      assert.deepEqual(lost, { lost: 0, lastCommit: null });
      assert.equal((await getClaim(app, later.body.id)).state, "active");
    },
  );

  await t.step("a removal with no lease held records no lease loss", async () => {
    await using app = await makeApp();
    await seedRegion(app, "iad", 0);
    const recorded: unknown[] = [];
    for (const remove of ["gone", "delete"]) {
      await putResource(app, "r1", { slots: 2 });
      const res = remove === "gone"
        ? await putResource(app, "r1", { slots: 2, state: "gone" })
        : await app.request("DELETE", "/v1/regions/iad/resources/r1");
      assert.equal(res.status, 200, JSON.stringify(res.body));
      recorded.push(...await Array.fromAsync(app.kv.list({ prefix: keys.leaseLosses("iad") })));
    }
    assert.deepEqual(recorded, []);
  });

  await t.step(
    "the consistency token of a DELETE or a PUT gone covers the leases it ended",
    async () => {
      await using app = await makeApp();
      await seedRegion(app, "iad", 0);
      for (const remove of ["gone", "delete"]) {
        await putResource(app, "r1", { slots: 3 });
        const held = await Promise.all(
          [1, 2, 3].map((i) => claim(app, "iad", { holder: `h${i}` })),
        );
        const res = remove === "gone"
          ? await putResource(app, "r1", { slots: 3, state: "gone" })
          : await app.request("DELETE", "/v1/regions/iad/resources/r1");
        assert.equal(res.status, 200, JSON.stringify(res.body));
        const records = await Array.fromAsync(app.kv.list({ prefix: keys.leaseLosses("iad") }));
        assert.deepEqual(records, [], "the recorded lease loss is finished and deleted");
        // A replica caught up to the token has every lease loss: their commits are not newer.
        for (const h of held) {
          const stored = await app.kv.get(keys.claim("iad", h.body.id));
          assert.equal((stored.value as { state: string }).state, "lost");
          assert.ok(
            stored.versionstamp! <= res.body.consistencyToken,
            `${remove}: the lease loss ${stored.versionstamp} is newer than the token ${res.body.consistencyToken}`,
          );
        }
      }
    },
  );
});

/**
 * Resource r1 in region iad, removed while a lease held it by a DELETE (or a PUT gone) that
 * crashed before its lease loss.
 */
async function deletedMidLoss(app: TestApp, by: "DELETE" | "PUT gone" = "DELETE") {
  await seedRegion(app, "iad", 0);
  await putResource(app, "r1", { slots: 1 });
  const held = await claim(app, "iad", { holder: "h" });
  // The removal commits, then "crashes" on the listing its lease loss starts with.
  const crashing = onSlotListing(app.kv, 2, () => {
    throw new Error("injected: crashed before the lease loss");
  });
  const removal = by === "DELETE"
    ? deleteResource(crashing, app.clock, "iad", "r1")
    : putSpec(crashing, app.clock, "iad", "r1", { slots: 1, labels: {}, state: "gone" });
  await assert.rejects(removal, /injected/);
  assert.equal((await getClaim(app, held.body.id)).state, "active", "the crash left it held");
  return held;
}

Deno.test("a DELETE interrupted before its lease loss is finished by its retry, which answers 404", async () => {
  await using app = await makeApp();
  const held = await deletedMidLoss(app);
  const retry = await app.request("DELETE", "/v1/regions/iad/resources/r1", {
    token: TOKENS.agent,
  });
  assertProblem(retry, 404);
  const after = await getClaim(app, held.body.id);
  assert.deepEqual([after.state, after.reason], ["lost", "resource deleted"]);
  assertProblem(await release(app, held.body.id, held.body.secret), 409);
  assert.deepEqual(await poolOf(app, "iad"), { free: 0, claimed: 0, total: 0 });
});

Deno.test("a renew over a DELETE's unfinished lease loss ends the lease as deleted, with 409", async () => {
  await using app = await makeApp();
  const held = await deletedMidLoss(app);
  assertProblem(await renew(app, held.body.id, held.body.secret), 409);
  const after = await getClaim(app, held.body.id);
  assert.deepEqual([after.state, after.reason], ["lost", "resource deleted"]);
  const records = await Array.fromAsync(app.kv.list({ prefix: keys.leaseLosses("iad") }));
  assert.deepEqual(records, [], "the record is finished");
});

Deno.test("registered again over a DELETE's unfinished lease loss, its old leases end as deleted first", async () => {
  await using app = await makeApp();
  const held = await deletedMidLoss(app);
  assert.equal((await putResource(app, "r1", { slots: 1 })).status, 201, "registered again");
  const after = await getClaim(app, held.body.id);
  assert.deepEqual([after.state, after.reason], ["lost", "resource deleted"]);
  assertProblem(await renew(app, held.body.id, held.body.secret), 409);
  const records = await Array.fromAsync(app.kv.list({ prefix: keys.leaseLosses("iad") }));
  assert.deepEqual(records, []);
  const next = await claim(app, "iad", { holder: "next" });
  assert.equal(next.status, 201, "the slot is free for a new claim");
  assert.deepEqual(await poolOf(app, "iad"), { free: 0, claimed: 1, total: 1 });
});

Deno.test("a status report bringing it back over a removal's unfinished lease loss ends those leases first", async (t) => {
  const removals = { DELETE: "resource deleted", "PUT gone": "resource gone" } as const;
  for (const [by, reason] of Object.entries(removals) as Array<[keyof typeof removals, string]>) {
    await t.step(by, async () => {
      await using app = await makeApp();
      const held = await deletedMidLoss(app, by);
      const { messages } = await ingestStatus(app.kv, app.clock, "iad", [
        { resource: "r1", seq: 1, state: "ready" },
      ]);
      await new StatusApplier(app.kv, app.clock).apply(messages);
      const back = await app.request("GET", "/v1/regions/iad/resources/r1");
      assert.equal(back.body.state, "ready");
      const after = await getClaim(app, held.body.id);
      assert.deepEqual([after.state, after.reason], ["lost", reason]);
      assertProblem(await renew(app, held.body.id, held.body.secret), 409);
      assert.equal((await claim(app, "iad", { holder: "next" })).status, 201);
      assert.deepEqual(await poolOf(app, "iad"), { free: 0, claimed: 1, total: 1 });
    });
  }
});

Deno.test("a PUT gone over a DELETE's unfinished lease loss ends those leases as deleted", async () => {
  await using app = await makeApp();
  const held = await deletedMidLoss(app);
  assert.equal((await putResource(app, "r1", { slots: 1, state: "gone" })).status, 201);
  const after = await getClaim(app, held.body.id);
  assert.deepEqual([after.state, after.reason], ["lost", "resource deleted"]);
  const records = await Array.fromAsync(app.kv.list({ prefix: keys.leaseLosses("iad") }));
  assert.deepEqual(records, []);
});

Deno.test("a DELETE's token covers its lease losses when another finisher takes its record first", async (t) => {
  for (const other of ["the sweep chain", "a concurrent PUT gone"]) {
    await t.step(other, async () => {
      await using app = await makeApp();
      await seedRegion(app, "iad", 0);
      await putResource(app, "r1", { slots: 2 });
      const held = await Promise.all([1, 2].map((i) => claim(app, "iad", { holder: `h${i}` })));
      // Just before the DELETE reads its own lease-loss record, the other finishes it.
      let armed = true;
      const kv = kvWith(app.kv, {
        get: async (key, options) => {
          if (armed && key[2] === "loss") {
            armed = false;
            if (other === "the sweep chain") await finishLeaseLosses(app.kv, app.clock, "iad");
            else {assert.equal(
                (await putResource(app, "r1", { slots: 2, state: "gone" })).status,
                201,
              );}
          }
          return await app.kv.get(key, options);
        },
      });
      const { consistencyToken } = await deleteResource(kv, app.clock, "iad", "r1");
      assert.ok(!armed, "the other finisher ran");
      for (const h of held) {
        const stored = await app.kv.get<{ state: string }>(keys.claim("iad", h.body.id));
        assert.equal(stored.value!.state, "lost");
        assert.ok(stored.versionstamp! <= consistencyToken, "the token covers the lease loss");
      }
    });
  }
});
