import assert from "node:assert/strict";
import { keys } from "../lib/keys.ts";
import { ingestStatus } from "../lib/status.ts";
import type { StatusUpdate } from "../lib/schemas.ts";
import { assertProblem, makeApp, snapshotKv, type TestApp, TOKENS } from "./_helpers.ts";

/** Accepts `updates` in one message and dead-letters it, as Deno KV does once its retries run out. */
async function deadLettered(t: TestApp, updates: StatusUpdate[]) {
  const { messages } = await ingestStatus(t.kv, t.clock, "iad", updates);
  assert.equal(messages.length, 1);
  await t.kv.set(keys.deadLetter("iad", messages[0].id), messages[0]);
  return messages[0];
}

const UPDATES: StatusUpdate[] = [
  { resource: "a", seq: 3, state: "ready", load: 0.5 },
  { resource: "b", seq: 1, state: "draining" },
  { resource: "a", seq: 4, state: "gone" },
];

const region = async (t: TestApp) => (await t.request("GET", "/v1/regions/iad")).body;

Deno.test("dead letters are listed, read and discarded by an admin", async (t) => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const first = await deadLettered(app, UPDATES);
  app.clock.advance(5_000);
  const second = await deadLettered(app, [{ resource: "c", seq: 9, state: "ready" }]);

  await t.step(
    "the list names each message's resources, oldest first, without updates",
    async () => {
      const page = await app.request("GET", "/v1/regions/iad/dead-letters");
      assert.equal(page.status, 200);
      assert.deepEqual(page.body, {
        items: [
          {
            id: first.id,
            readable: true,
            enqueuedAt: new Date(first.enqueuedAt).toISOString(),
            updateCount: 3,
            resources: ["a", "b"],
          },
          {
            id: second.id,
            readable: true,
            enqueuedAt: new Date(second.enqueuedAt).toISOString(),
            updateCount: 1,
            resources: ["c"],
          },
        ],
        cursor: null,
      });
      const one = await app.request("GET", "/v1/regions/iad/dead-letters?limit=1");
      assert.deepEqual(one.body.items.map((i: { id: string }) => i.id), [first.id]);
      const next = await app.request(
        "GET",
        `/v1/regions/iad/dead-letters?limit=1&cursor=${encodeURIComponent(one.body.cursor)}`,
      );
      assert.deepEqual(next.body.items.map((i: { id: string }) => i.id), [second.id]);
      assert.equal(next.body.cursor, null, "a full last page says nothing follows");
    },
  );

  await t.step("one dead letter shows its updates as accepted", async () => {
    const read = await app.request("GET", `/v1/regions/iad/dead-letters/${first.id}`);
    assert.equal(read.status, 200);
    assert.deepEqual([read.body.updates, read.body.problem], [UPDATES, null]);
  });

  await t.step(
    "discarding one not yet retired from the lag retires it in the same commit",
    async () => {
      assert.equal(await pendingEntries(app), 2, "no region read has retired them yet");
      const gone = await app.request("DELETE", `/v1/regions/iad/dead-letters/${first.id}`);
      assert.equal(gone.status, 204);
      assert.match(gone.headers.get("allot-consistency-token") ?? "", /^[0-9a-f]{20}$/);
      assert.equal(await pendingEntries(app), 1);
      const health = await region(app);
      assert.deepEqual([health.pending, health.deadLettered, health.lagMs], [0, 4, 0]);
      assertProblem(await app.request("GET", `/v1/regions/iad/dead-letters/${first.id}`), 404);
    },
  );

  await t.step("discarding one already retired counts nothing twice", async () => {
    assert.equal(await pendingEntries(app), 0, "the region read retired the other");
    assert.equal(
      (await app.request("DELETE", `/v1/regions/iad/dead-letters/${second.id}`)).status,
      204,
    );
    const health = await region(app);
    assert.deepEqual([health.pending, health.deadLettered], [0, 4]);
    assert.deepEqual((await app.request("GET", "/v1/regions/iad/dead-letters")).body, {
      items: [],
      cursor: null,
    });
    assertProblem(await app.request("DELETE", `/v1/regions/iad/dead-letters/${second.id}`), 404);
  });
});

async function pendingEntries(t: TestApp): Promise<number> {
  let n = 0;
  for await (const _ of t.kv.list({ prefix: keys.pendingIndex("iad") })) n++;
  return n;
}

Deno.test("a dead letter this version cannot read is listed as such and can be discarded", async (t) => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const { messages } = await ingestStatus(app.kv, app.clock, "iad", [
    { resource: "a", seq: 1, state: "ready" },
  ]);
  // As a newer version might write it: no enqueue time this version knows of, a new field.
  const { enqueuedAt: _at, ...rest } = messages[0];
  const newer = { ...rest, acceptedAt: "2026-11-24", updates: [{ resource: "a", seq: 1 }] };
  await app.kv.set(keys.deadLetter("iad", newer.id), newer);

  await t.step("listed and read as unreadable, with the reason", async () => {
    const page = await app.request("GET", "/v1/regions/iad/dead-letters");
    assert.deepEqual(page.body.items, [
      { id: newer.id, readable: false, enqueuedAt: null, updateCount: null, resources: [] },
    ]);
    const read = await app.request("GET", `/v1/regions/iad/dead-letters/${newer.id}`);
    assert.equal(read.body.updates, null);
    assert.match(read.body.problem, /enqueuedAt|acceptedAt|updates/);
  });

  await t.step(
    "discarded, it retires its pending entry, found without an enqueue time",
    async () => {
      assert.equal(await pendingEntries(app), 1);
      assert.equal(
        (await app.request("DELETE", `/v1/regions/iad/dead-letters/${newer.id}`)).status,
        204,
      );
      assert.equal(await pendingEntries(app), 0);
      const health = await region(app);
      assert.deepEqual([health.pending, health.deadLettered, health.lagMs], [0, 1, 0]);
    },
  );
});

Deno.test("dead-letter routes refuse bad input and unknown names, changing nothing", async () => {
  await using app = await makeApp();
  await app.request("PUT", "/v1/regions/iad", { body: {} });
  const letter = await deadLettered(app, UPDATES);
  const before = await snapshotKv(app.kv);
  const cases: [string, string, number][] = [
    ["GET", "/v1/regions/nowhere/dead-letters", 404],
    ["DELETE", `/v1/regions/nowhere/dead-letters/${letter.id}`, 404],
    ["GET", "/v1/regions/iad/dead-letters/01JDKQ3V8M6Y2G5T7R9W0XCPHN", 404],
    ["DELETE", "/v1/regions/iad/dead-letters/01JDKQ3V8M6Y2G5T7R9W0XCPHN", 404],
    ["GET", `/v1/regions/iad/dead-letters/${"x".repeat(65)}`, 400],
    ["DELETE", "/v1/regions/iad/dead-letters/a%20b", 400],
    ["GET", "/v1/regions/iad/dead-letters?limit=0", 400],
    ["GET", "/v1/regions/iad/dead-letters?cursor=bogus", 400],
  ];
  for (const [method, path, status] of cases) {
    assertProblem(await app.request(method, path), status);
  }
  for (const token of [TOKENS.agent, TOKENS.client, TOKENS.adminFra]) {
    assertProblem(
      await app.request("DELETE", `/v1/regions/iad/dead-letters/${letter.id}`, { token }),
      403,
    );
  }
  assert.deepEqual(await snapshotKv(app.kv), before);
});
