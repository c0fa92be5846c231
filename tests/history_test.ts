import assert from "node:assert/strict";
import { GroupEnder } from "../lib/ender.ts";
import { sweepExpired } from "../lib/leases.ts";
import { handleQueueMessage, type LeaseSweepMessage } from "../lib/queue.ts";
import { readSweeper } from "../lib/sweeper.ts";
import { checkHistory, grantEvent, HistoryRecorder, isoMs } from "./_checker.ts";
import {
  assertProblem,
  claim,
  leaseQueueDeps,
  listPages,
  makeApp,
  poolOf,
  release,
  renew,
  type TestApp,
  TOKENS,
} from "./_helpers.ts";
import { seededRandom } from "../lib/random.ts";

const CALLERS = 50;
const ROUNDS = 60;
/**
 * The callers' choices follow this seed (ALLOT_TEST_SEED=<seed> to vary or rerun them);
 * the server's interleavings need not repeat exactly.
 */
const SEED = Number(Deno.env.get("ALLOT_TEST_SEED") ?? 0x5eed);

interface Held {
  id: string;
  secret: string;
}

Deno.test("a randomized claim/renew/release/expire history of 50 callers never double-allocates", async () => {
  const random = seededRandom(SEED);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)];
  await using a = await makeApp();
  await using b = await makeApp({ kv: a.kv, clock: a.clock });
  const apps: TestApp[] = [a, b];
  const { kv, clock } = a;

  const region = await a.request("PUT", "/v1/regions/iad", {
    body: { lease: { defaultMs: 2000, maxMs: 5000 } },
  });
  assert.equal(region.status, 201);
  // 30 slots in all for 50 callers: 14 single-slot resources and 4 with 4 slots, two kinds.
  for (let i = 0; i < 18; i++) {
    const res = await a.request("PUT", `/v1/regions/iad/resources/r${i}`, {
      body: { slots: i < 14 ? 1 : 4, labels: { kind: i % 2 === 0 ? "even" : "odd" } },
    });
    assert.equal(res.status, 201);
  }
  const total = 30;

  const history = new HistoryRecorder(clock);
  const held: (Held | null)[] = Array.from({ length: CALLERS }, () => null);
  const messages: { type: "lease.expire"; claimId: string; expiresAt: number }[] = [];
  const stats = {
    answers: 0,
    grants: 0,
    renews: 0,
    releases: 0,
    ended: 0,
    noCapacity: 0,
    queueExpired: 0,
  };
  const slotGrants = new Map<string, number>();

  /** One step of caller `c`, recorded in the history. */
  async function step(c: number): Promise<void> {
    const t = pick(apps);
    const mine = held[c];
    const invoked = history.now();
    if (mine === null) {
      const body: Record<string, unknown> = { holder: `caller-${c}` };
      const lease = random();
      if (lease < 0.8) body.leaseMs = 300 + Math.floor(random() * 5700); // sometimes > maxMs
      if (random() < 0.2) body.labels = { kind: pick(["even", "odd"]) };
      const res = await claim(t, "iad", body);
      const acked = history.now();
      stats.answers++;
      if (res.status === 503) {
        assertProblem(res, 503);
        stats.noCapacity++;
        return;
      }
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const expiresAt = isoMs(res.body.leaseExpiresAt);
      assert.ok(expiresAt - invoked.time <= 5000, "leaseMs is clamped to lease.maxMs");
      const kind = Number(res.body.resource.slice(1)) % 2 === 0 ? "even" : "odd";
      if (body.labels) assert.deepEqual(body.labels, { kind }, "labels select resources");
      history.record(grantEvent(res.body, invoked, acked));
      messages.push({ type: "lease.expire", claimId: res.body.id, expiresAt });
      const slot = `${res.body.resource}#${res.body.slot}`;
      slotGrants.set(slot, (slotGrants.get(slot) ?? 0) + 1);
      held[c] = { id: res.body.id, secret: res.body.secret };
      stats.grants++;
      return;
    }
    const action = random();
    if (action < 0.35) {
      const body = random() < 0.7 ? { leaseMs: 300 + Math.floor(random() * 5700) } : {};
      const res = await renew(t, mine.id, mine.secret, body);
      const acked = history.now();
      stats.answers++;
      if (res.status === 200) {
        const expiresAt = isoMs(res.body.leaseExpiresAt);
        history.record({
          kind: "renew",
          claimId: mine.id,
          expiresAt,
          fencingToken: res.body.fencingToken,
          invoked,
          acked,
        });
        messages.push({ type: "lease.expire", claimId: mine.id, expiresAt });
        stats.renews++;
      } else {
        assertProblem(res, 409);
        history.record({ kind: "ended", claimId: mine.id, why: "renew 409", invoked, acked });
        held[c] = null;
        stats.ended++;
      }
    } else if (action < 0.6) {
      const res = await release(t, mine.id, mine.secret);
      const acked = history.now();
      stats.answers++;
      if (res.status === 204) {
        history.record({ kind: "release", claimId: mine.id, invoked, acked });
        stats.releases++;
      } else {
        assertProblem(res, 409);
        history.record({ kind: "ended", claimId: mine.id, why: "release 409", invoked, acked });
        stats.ended++;
      }
      held[c] = null;
    } else if (action < 0.75) {
      const res = await t.request("GET", `/v1/claims/${mine.id}`, { token: TOKENS.client });
      const acked = history.now();
      stats.answers++;
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.secret, undefined);
      if (res.body.state !== "active") {
        history.record({ kind: "ended", claimId: mine.id, why: res.body.state, invoked, acked });
        held[c] = null;
        stats.ended++;
      }
    } else if (action < 0.9) {
      // Idle: keep the claim and let the lease run; a later renew or release may find it lost.
    } else {
      // Abandon: never touch the claim again; only expiry frees its slot.
      held[c] = null;
    }
  }

  /** An operator revoking a random live claim; an acknowledged revoke ends the lease. */
  async function revokeOne(): Promise<void> {
    const targets = held.map((h, c) => [h, c] as const).filter(([h]) => h !== null);
    if (targets.length === 0) return;
    const [target] = pick(targets);
    const invoked = history.now();
    const res = await pick(apps).request("POST", `/v1/claims/${target!.id}/revoke`, {
      token: TOKENS.admin,
      body: { reason: "chaos" },
    });
    const acked = history.now();
    stats.answers++;
    if (res.status !== 200) assertProblem(res, 409);
    history.record({ kind: "ended", claimId: target!.id, why: "revoked", invoked, acked });
  }

  /** Every sweep tick the region's chains were waiting for, the current one last. */
  const ticks: LeaseSweepMessage[] = [];
  /** Expires what the sweeps find due, in shared commits as main.ts does. */
  const sweepEnder = new GroupEnder(kv, clock);

  /**
   * Delivers queue messages: ticks of the current sweep chain and redelivered ticks of
   * replaced or ended ones, and `lease.expire` messages as releases before the sweep
   * chain enqueued them (still in queues after a deploy): due, stale and early alike.
   */
  async function deliver(): Promise<void> {
    const { state, beat } = await readSweeper(kv, "iad");
    const last = ticks.at(-1);
    if (
      state.value && beat.value &&
      (last?.chain !== beat.value.chain || last.tick !== beat.value.tick)
    ) {
      ticks.push({
        type: "lease.sweep",
        region: "iad",
        chain: beat.value.chain,
        tick: beat.value.tick,
      });
    }
    const now = clock.now();
    const due = messages.filter((m) => m.expiresAt <= now && m.expiresAt > now - 2000);
    const batch = [
      ...Array.from({ length: 6 }, () => pick(due)),
      pick(messages),
      pick(messages),
      ticks.at(-1),
      pick(ticks),
    ];
    await Promise.all(
      batch.filter((m) => m !== undefined).map(async (message) => {
        const deps = { ...leaseQueueDeps(a), ender: sweepEnder };
        const outcome = await handleQueueMessage(deps, message);
        if (outcome === "expired") stats.queueExpired++;
      }),
    );
  }

  for (let round = 0; round < ROUNDS; round++) {
    const work: Promise<unknown>[] = Array.from({ length: CALLERS }, (_, c) => step(c));
    if (random() < 0.15) work.push(sweepExpired(kv, clock, "iad"));
    if (random() < 0.8) work.push(deliver());
    if (random() < 0.15) work.push(revokeOne());
    try {
      await Promise.all(work);
    } catch (error) {
      throw new Error(`round ${round} failed (seed ${SEED}): ${error}`, { cause: error });
    }
    clock.advance(Math.floor(random() * 1200));
  }

  const violations = checkHistory(history.events);
  assert.deepEqual(violations, [], `seed ${SEED}: ${JSON.stringify(violations.slice(0, 5))}`);

  // The run exercised what it claims to: takeovers, renewals, releases, observed losses.
  assert.ok(stats.answers >= 2500, `only ${stats.answers} answers`);
  assert.ok(history.events.length >= 1000, `only ${history.events.length} events recorded`);
  assert.equal(slotGrants.size, total, "every slot was granted");
  assert.ok([...slotGrants.values()].every((n) => n >= 3), "every slot was taken over repeatedly");
  assert.ok(stats.renews > 100 && stats.releases > 100, JSON.stringify(stats));
  assert.ok(stats.ended > 20 && stats.noCapacity > 100, JSON.stringify(stats));
  assert.ok(stats.queueExpired > 5, JSON.stringify(stats));
  assert.ok(sweepEnder.stats.ended > 20, `sweeps expired ${sweepEnder.stats.ended} leases`);

  // Once every lease has run out, the pool is whole again and every claim has ended.
  clock.advance(10 * 60_000);
  const { beat } = await readSweeper(kv, "iad");
  const last = {
    type: "lease.sweep",
    region: "iad",
    chain: beat.value!.chain,
    tick: beat.value!.tick,
  };
  assert.equal(
    await handleQueueMessage(leaseQueueDeps(a), last),
    "ended",
    "one tick expires all that is left",
  );
  assert.deepEqual(await poolOf(a, "iad"), { free: total, claimed: 0, total });
  const active = await listPages(a, "/v1/regions/iad/claims?state=active");
  assert.equal(active.items.length, 0);
  const resources = await listPages<{ claimed: number }>(a, "/v1/regions/iad/resources");
  assert.ok(resources.items.every((r) => r.claimed === 0));
});
