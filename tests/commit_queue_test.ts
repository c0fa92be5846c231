import assert from "node:assert/strict";
import { CommitQueue, type Pending } from "../lib/commit_queue.ts";
import { keys } from "../lib/keys.ts";
import {
  claim,
  getClaim,
  interceptCommits,
  kvWith,
  makeApp,
  poolOf,
  release,
  seedRegion,
} from "./_helpers.ts";

Deno.test("CommitQueue runs one group at a time and settles every job", async () => {
  let running = 0;
  let most = 0;
  const groups: number[][] = [];
  const queue = new CommitQueue<number, number>({
    what: "jobs",
    maxQueued: 1000,
    fits: (group) => group.length < 8,
    run: async (group: Pending<number, number>[]) => {
      most = Math.max(most, ++running);
      groups.push(group.map((p) => p.job));
      await new Promise((resolve) => setTimeout(resolve, 1));
      running--;
      for (const p of group) {
        if (p.job % 10 === 9) p.reject(new Error(`job ${p.job} failed`));
        else p.resolve(p.job * 2);
      }
    },
    alone: () => Promise.reject(new Error("no group throws here")),
  });
  const outcomes = await Promise.allSettled(Array.from({ length: 100 }, (_, i) => queue.push(i)));
  assert.equal(most, 1, "groups never overlap");
  outcomes.forEach((outcome, i) => {
    if (i % 10 === 9) assert.equal(outcome.status, "rejected");
    else assert.deepEqual(outcome, { status: "fulfilled", value: i * 2 });
  });
  assert.deepEqual(groups.flat().sort((a, b) => a - b), Array.from({ length: 100 }, (_, i) => i));
  assert.ok(groups.every((g) => g.length <= 8));
  assert.ok(groups.length < 100, `${groups.length} groups for 100 jobs: jobs share groups`);
  assert.equal(queue.waiting, 0);
});

Deno.test("a group whose run throws sends only the members it had not answered alone", async () => {
  const alone: number[] = [];
  const queue = new CommitQueue<number, number>({
    what: "jobs",
    maxQueued: 1000,
    fits: () => true,
    run: (group) => {
      group[0].resolve(-1); // answered before the failure: never answered twice
      return Promise.reject(new TypeError("a shared read failed"));
    },
    alone: (job) => {
      alone.push(job);
      return job === 3 ? Promise.reject(new Error("job 3 failed alone")) : Promise.resolve(job * 2);
    },
  });
  // Job 0 finds the queue idle and runs as a group of one; 1-3 form the next group.
  const outcomes = await Promise.allSettled([0, 1, 2, 3].map((i) => queue.push(i)));
  assert.deepEqual(outcomes.slice(0, 3), [
    { status: "fulfilled", value: -1 },
    { status: "fulfilled", value: -1 },
    { status: "fulfilled", value: 4 },
  ]);
  assert.equal(outcomes[3].status, "rejected");
  assert.deepEqual(alone, [2, 3]);
});

/**
 * Wraps `inner` so that the next free-index listing, once `arm()` is called, throws: a
 * transient read failure in the middle of a claim group.
 */
function failOneFreeListing(inner: Deno.Kv): { kv: Deno.Kv; arm(): void; fired(): boolean } {
  let armed = false;
  let fired = false;
  const kv = kvWith(inner, {
    list: (selector, options) => {
      if (armed && "prefix" in selector && selector.prefix[2] === "free") {
        armed = false;
        fired = true;
        throw new TypeError("a transient KV read failure");
      }
      return inner.list(selector, options);
    },
  });
  return { kv, arm: () => armed = true, fired: () => fired };
}

Deno.test("a claim group whose shared read fails answers each claim alone, never 500", async () => {
  const inner = await Deno.openKv(":memory:");
  const commits = interceptCommits(inner);
  const failing = failOneFreeListing(commits.kv);
  await using t = await makeApp({ kv: failing.kv });
  await seedRegion(t, "iad", 50);
  // The first claim commits alone (an idle isolate); the 20 queued behind it form a group
  // once that commit is done, and the group's free-index read throws.
  commits.arm(() => Promise.resolve(failing.arm()));
  const answers = await Promise.all(
    Array.from({ length: 21 }, (_, i) => claim(t, "iad", { holder: `h${i}` })),
  );
  assert.ok(failing.fired(), "a free-index read failed");
  assert.deepEqual(answers.map((r) => r.status), Array(21).fill(201));
  const slots = new Set(answers.map((r) => `${r.body.resource}#${r.body.slot}`));
  assert.equal(slots.size, 21, "distinct slots");
  assert.deepEqual(await poolOf(t, "iad"), { total: 50, free: 29, claimed: 21 });
  inner.close();
});

Deno.test("a release of a claim this app granted reads claim, spec and slot in one round trip", async () => {
  const inner = await Deno.openKv(":memory:");
  let reads = 0;
  const kv = kvWith(inner, {
    getMany: (...args) => {
      reads++;
      return inner.getMany(...args);
    },
  });
  await using t = await makeApp({ kv });
  await seedRegion(t, "iad", 3);
  const granted = await claim(t, "iad", { holder: "h" });
  assert.equal(granted.status, 201);
  const before = reads;
  const released = await release(t, granted.body.id, granted.body.secret);
  assert.equal(released.status, 204, JSON.stringify(released.body));
  assert.equal(reads - before, 1, "one getMany for the claim, its spec and its slot");

  // A claim another instance granted has no remembered place: the claim first, then the rest.
  await using other = await makeApp({ kv, clock: t.clock });
  const elsewhere = await claim(other, "iad", { holder: "h2" });
  const mark = reads;
  assert.equal((await release(t, elsewhere.body.id, elsewhere.body.secret)).status, 204);
  assert.equal(reads - mark, 2, "the claim first, then its spec and slot");
  inner.close();
});

Deno.test("one claim released many times at once, among other releases, ends once", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 40);
  const grants = await Promise.all(
    Array.from({ length: 40 }, (_, i) => claim(t, "iad", { holder: `h${i}` })),
  );
  assert.ok(grants.every((g) => g.status === 201));
  const [target, ...others] = grants.map((g) => g.body);
  const results = await Promise.all([
    ...Array.from({ length: 20 }, () => release(t, target.id, target.secret)),
    ...others.map((g) => release(t, g.id, g.secret)),
  ]);
  // Each answers 204 (a resent release is not refused) with the one release commit's token.
  assert.deepEqual(results.slice(0, 20).map((r) => r.status), Array(20).fill(204));
  const tokens = new Set(results.slice(0, 20).map((r) => r.headers.get("allot-consistency-token")));
  const stored = await t.kv.get(keys.claim("iad", target.id));
  assert.deepEqual([...tokens], [stored.versionstamp], "ended by one commit");
  assert.ok(results.slice(20).every((r) => r.status === 204), "the other releases all succeed");
  const health = (await t.request("GET", "/v1/regions/iad")).body;
  assert.deepEqual([health.free, health.claimed], [40, 0]);
});

Deno.test("a release group whose commit throws answers each release from the lone path, never 500", async () => {
  const inner = await Deno.openKv(":memory:");
  const commits = interceptCommits(inner);
  await using t = await makeApp({ kv: commits.kv });
  await seedRegion(t, "iad", 5);
  const grants = [];
  for (let i = 0; i < 5; i++) grants.push((await claim(t, "iad", { holder: `h${i}` })).body);
  // The first release commits alone (an idle isolate); the four queued behind it form one
  // group, whose commit (the next one) throws.
  commits.arm(() => {
    commits.arm(() => Promise.reject(new TypeError("a transient KV failure")));
    return Promise.resolve();
  });
  const answers = await Promise.all(grants.map((g) => release(t, g.id, g.secret)));
  assert.deepEqual(answers.map((r) => r.status), [204, 204, 204, 204, 204]);
  assert.ok(commits.fired(), "the group's commit threw");
  for (const g of grants) assert.equal((await getClaim(t, g.id)).state, "released");
  assert.deepEqual(await poolOf(t, "iad"), { total: 5, free: 5, claimed: 0 });
  inner.close();
});
