import assert from "node:assert/strict";
import { type CachedResource, ResourceCache } from "../lib/resource_cache.ts";

const resource = (seq: number): CachedResource => ({
  spec: { id: "r", slots: 1, labels: {}, state: "ready", updatedAt: 0 },
  specVersionstamp: "01",
  telemetry: { seq, load: null, at: 0, fieldSeq: { state: seq, slots: 0, labels: 0, load: 0 } },
  telemetryVersionstamp: "01",
});

Deno.test("ResourceCache serves a region only at the versionstamp it was recorded at", async (t) => {
  await t.step("a commit from the cached versionstamp moves the copy forward", () => {
    const cache = new ResourceCache();
    cache.record("iad", null, "v1", [["a", resource(1)]]);
    assert.equal(cache.at("iad", "v1").get("a")?.telemetry?.seq, 1);
    cache.record("iad", "v1", "v2", [["b", resource(2)]]);
    assert.deepEqual([...cache.at("iad", "v2").keys()], ["a", "b"]);
  });
  await t.step("another writer's versionstamp drops the copy", () => {
    const cache = new ResourceCache();
    cache.record("iad", null, "v1", [["a", resource(1)]]);
    assert.equal(cache.at("iad", "v9").size, 0);
    assert.equal(cache.size, 0);
    assert.equal(cache.at("iad", "v1").size, 0, "dropped for good, not just hidden");
  });
  await t.step(
    "a commit planned from a stale read replaces the copy instead of adding to it",
    () => {
      const cache = new ResourceCache();
      cache.record("iad", null, "v1", [["a", resource(1)]]);
      cache.record("iad", "v5", "v6", [["b", resource(6)]]);
      assert.deepEqual([...cache.at("iad", "v6").keys()], ["b"]);
      assert.equal(cache.size, 1);
    },
  );
  await t.step("regions are independent", () => {
    const cache = new ResourceCache();
    cache.record("iad", null, "v1", [["a", resource(1)]]);
    cache.record("fra", null, "w1", [["a", resource(2)]]);
    assert.equal(cache.at("iad", "other").size, 0);
    assert.equal(cache.at("fra", "w1").get("a")?.telemetry?.seq, 2);
  });
  await t.step("past the cap, new resources are not cached; cached ones still update", () => {
    const cache = new ResourceCache(2);
    cache.record("iad", null, "v1", [["a", resource(1)], ["b", resource(1)], ["c", resource(1)]]);
    assert.equal(cache.size, 2);
    cache.record("iad", "v1", "v2", [["a", resource(7)], ["d", resource(7)]]);
    const copy = cache.at("iad", "v2");
    assert.deepEqual([copy.get("a")?.telemetry?.seq, copy.has("d")], [7, false]);
  });
});
