/** The engine's loops must claim and release for real, and count what the checker counts. */
import assert from "node:assert/strict";
import type { Allocator } from "../lib/allocate.ts";
import { GroupCommitter } from "../lib/group.ts";
import { GroupRenewer } from "../lib/renewer.ts";
import { makeApp, poolOf, seedRegion } from "../tests/_helpers.ts";
import { runClaimLoops, runRenewLoops } from "./engine.ts";

Deno.test("runClaimLoops() claims and releases through the group committers", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "bench", 8);

  await t.step("every loop is a granted claim and an acknowledged release", async () => {
    const result = await runClaimLoops(app.kv, app.clock, {
      region: "bench",
      loops: 4,
      stop: (done) => done >= 100,
    });
    assert.ok(result.loops >= 100 && result.loops < 104, `${result.loops} loops`);
    assert.equal(result.doubleAllocations, 0);
    assert.equal(result.errors, 0);
    assert.ok(result.claimP99Ms !== null && result.claimP99Ms >= result.claimP50Ms!);
    assert.deepEqual(await poolOf(app, "bench"), { free: 8, claimed: 0, total: 8 });
  });

  await t.step(
    "a release reads its claim, spec and slot in one round trip, as the app's do",
    async () => {
      // The committer and the ender share their LeasePlaces, as createApp builds them.
      let oneTrip = 0;
      const kv = new Proxy(app.kv, {
        get(target, prop) {
          const value = Reflect.get(target, prop, target);
          if (prop !== "getMany") return typeof value === "function" ? value.bind(target) : value;
          return (keys: Deno.KvKey[], options?: { consistency?: Deno.KvConsistencyLevel }) => {
            const parts = keys.map((key) => key[2]);
            if (parts.includes("claim") && parts.includes("slot")) oneTrip++;
            return target.getMany(keys, options);
          };
        },
      });
      const result = await runClaimLoops(kv, app.clock, {
        region: "bench",
        loops: 1,
        stop: (done) => done >= 10,
      });
      assert.equal(result.loops, 10);
      assert.equal(oneTrip, 10);
    },
  );

  await t.step("a claim path that hands out one slot twice is counted", async () => {
    const real = new GroupCommitter(app.kv, app.clock);
    const sameSlot: Allocator = {
      allocate: async (claim) => {
        const outcome = await real.allocate(claim);
        return { ...outcome, grant: { ...outcome.grant, resource: "res-0000", slot: 0 } };
      },
    };
    const result = await runClaimLoops(app.kv, app.clock, {
      region: "bench",
      loops: 4,
      stop: (done) => done >= 20,
      allocator: sameSlot,
    });
    // Four loops, one slot: each grant while others hold it counts, however many hold it.
    assert.ok(result.doubleAllocations >= 3, `${result.doubleAllocations} counted`);
    assert.equal(result.errors, 0, "the real claims behind them still release");
  });

  await t.step("a claim that fails is an error, not a loop", async () => {
    let attempts = 0;
    const result = await runClaimLoops(app.kv, app.clock, {
      region: "bench",
      loops: 2,
      stop: () => attempts >= 6,
      allocator: {
        allocate: () => {
          attempts++;
          return Promise.reject(new Error("refused"));
        },
      },
    });
    assert.equal(result.loops, 0);
    assert.equal(result.errors, attempts);
    assert.equal(result.claimP50Ms, null, "no latency without a grant");
  });
});

Deno.test("runRenewLoops() renews real leases, grouped or alone, and gives the pool back", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "bench", 8);
  for (const grouped of [true, false]) {
    await t.step(grouped ? "through a GroupRenewer" : "each renew alone", async () => {
      const result = await runRenewLoops(app.kv, app.clock, {
        region: "bench",
        loops: 6,
        stop: (done) => done >= 60,
        renewer: grouped ? new GroupRenewer(app.kv, app.clock) : undefined,
      });
      assert.ok(result.renews >= 60 && result.renews < 66, `${result.renews} renews`);
      assert.equal(result.errors, 0);
      assert.ok(result.p99Ms !== null && result.p99Ms >= result.p50Ms!);
      if (grouped) {
        assert.equal(result.group?.renewed, result.renews, "every renew went through a group");
        assert.ok(result.group!.commits < result.renews, "renews shared commits");
      } else assert.equal(result.group, null);
      assert.deepEqual(await poolOf(app, "bench"), { free: 8, claimed: 0, total: 8 });
    });
  }

  await t.step("a renew that fails is an error, not a loop", async () => {
    let attempts = 0;
    const result = await runRenewLoops(app.kv, app.clock, {
      region: "bench",
      loops: 2,
      stop: (tried) => tried >= 6,
      renewer: {
        renew: () => {
          attempts++;
          return Promise.reject(new Error("refused"));
        },
      },
    });
    assert.equal(result.renews, 0);
    assert.equal(result.errors, attempts);
    assert.ok(attempts >= 6 && attempts < 8, `${attempts} attempts`);
    assert.equal(result.p50Ms, null, "no latency without a renew");
    assert.equal(result.group, null);
    assert.deepEqual(await poolOf(app, "bench"), { free: 8, claimed: 0, total: 8 });
  });
});
