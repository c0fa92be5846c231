// First: the fake meter must be in place before lib/telemetry.ts takes its meter.
import { recorded, sumOf } from "./_fake_meter.ts";
import assert from "node:assert/strict";
import { StatusApplier } from "../lib/applier.ts";
import { ingestStatus } from "../lib/status.ts";
import { freshGauges, GAUGE_FRESH_MS } from "../lib/telemetry.ts";
import { makeApp, seedRegion } from "./_helpers.ts";

Deno.test("allot.status.updates counts each region's own updates when one commit spans regions", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 3);
  await seedRegion(t, "fra", 1);
  const update = (resource: string) => ({ resource, seq: 1, state: "ready" as const, load: 1 });
  const iad = await ingestStatus(
    t.kv,
    t.clock,
    "iad",
    ["res-0000", "res-0001", "res-0002"].map(update),
  );
  const fra = await ingestStatus(t.kv, t.clock, "fra", [update("res-0000")]);
  const applier = new StatusApplier(t.kv, t.clock);
  recorded.length = 0;
  assert.deepEqual(await applier.apply([...iad.messages, ...fra.messages]), [null, null]);
  assert.equal(applier.stats.commits, 1, "one commit for both regions");
  assert.deepEqual(
    [
      sumOf("allot.status.updates", { region: "iad" }),
      sumOf("allot.status.updates", { region: "fra" }),
    ],
    [3, 1],
  );
  assert.deepEqual(
    recorded.filter((r) => r.name === "allot.status.updates_per_commit").map((r) => r.value),
    [4],
  );
});

Deno.test("a process exports a region's gauges only while its evaluation is fresh", async () => {
  await using t = await makeApp();
  await seedRegion(t, "stale-gauges", 1);
  const gauge = () => freshGauges().find(([region]) => region === "stale-gauges")?.[1];
  const seenAt = gauge()?.seenAt;
  assert.ok(seenAt !== undefined, "exported: just evaluated by the region PUT");
  const exported = (now: number) => freshGauges(now).some(([region]) => region === "stale-gauges");
  assert.ok(exported(seenAt + GAUGE_FRESH_MS));
  assert.ok(!exported(seenAt + GAUGE_FRESH_MS + 1), "not evaluated since: no aging figures");
  assert.equal((await t.request("GET", "/v1/regions/stale-gauges")).status, 200);
  assert.ok(gauge()!.seenAt > seenAt, "a read evaluates the region again");
});
