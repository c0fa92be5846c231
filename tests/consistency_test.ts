import assert from "node:assert/strict";
import { readYourWrites } from "../lib/consistency.ts";
import { claim, makeApp, seedRegion, TOKENS } from "./_helpers.ts";

/** A KV whose eventual reads of the write mark come from a replica `behind` reads late. */
function laggingReplica(kv: Deno.Kv, behind: number) {
  let eventualReads = 0;
  return {
    kvLike: {
      get: async (key: Deno.KvKey, options?: { consistency?: Deno.KvConsistencyLevel }) => {
        const entry = await kv.get(key);
        if (options?.consistency !== "eventual") return entry;
        return eventualReads++ < behind
          ? { ...entry, versionstamp: "00000000000000000001" }
          : entry;
      },
    } as unknown as Deno.Kv,
    eventualReads: () => eventualReads,
  };
}

Deno.test("readYourWrites never serves a read older than the presented token", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  const granted = await claim(app, "iad");
  const token: string = granted.body.consistencyToken;
  const reads: string[] = [];
  const read = (level: Deno.KvConsistencyLevel) => {
    reads.push(level);
    return Promise.resolve(level);
  };

  await t.step("no token: a strong read", async () => {
    reads.length = 0;
    const out = await readYourWrites(app.kv, "iad", undefined, read);
    assert.deepEqual([out.consistency, reads], ["strong", ["strong"]]);
  });
  await t.step("a replica that has the write: served eventually", async () => {
    reads.length = 0;
    const out = await readYourWrites(laggingReplica(app.kv, 0).kvLike, "iad", token, read);
    assert.deepEqual([out.consistency, reads], ["eventual", ["eventual"]]);
  });
  await t.step("a replica that catches up within the budget: served eventually", async () => {
    reads.length = 0;
    const replica = laggingReplica(app.kv, 2);
    const out = await readYourWrites(replica.kvLike, "iad", token, read);
    assert.deepEqual([out.consistency, reads], ["eventual", ["eventual"]]);
    assert.equal(replica.eventualReads(), 3);
  });
  await t.step("a replica that stays behind: falls back to a strong read", async () => {
    reads.length = 0;
    const out = await readYourWrites(laggingReplica(app.kv, 1_000).kvLike, "iad", token, read);
    assert.deepEqual([out.consistency, reads], ["strong", ["strong"]]);
  });
  await t.step("a token from a later write than the replica has ever seen: strong", async () => {
    reads.length = 0;
    const out = await readYourWrites(app.kv, "iad", "ffffffffffffffffffff", read);
    assert.deepEqual([out.consistency, reads], ["strong", ["strong"]]);
  });
});

Deno.test("every write answers a consistency token that reads accept", async () => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 2);
  const put = await app.request("PUT", "/v1/regions/iad/resources/extra", { body: { slots: 3 } });
  const token = put.body.consistencyToken;
  assert.match(token, /^[0-9a-f]{20}$/);
  const list = await app.request("GET", "/v1/regions/iad/resources", {
    token: TOKENS.client,
    headers: { "allot-consistency-token": token },
  });
  assert.equal(list.status, 200);
  assert.ok(list.body.items.some((r: { id: string }) => r.id === "extra"));
  const granted = await claim(app, "iad");
  const read = await app.request("GET", `/v1/claims/${granted.body.id}`, {
    token: TOKENS.client,
    headers: { "allot-consistency-token": granted.body.consistencyToken },
  });
  assert.equal(read.status, 200);
  assert.equal(read.body.state, "active");
  const bad = await app.request("GET", "/v1/regions/iad/resources", {
    token: TOKENS.client,
    headers: { "allot-consistency-token": "not-a-token" },
  });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.field, "Allot-Consistency-Token");
});
