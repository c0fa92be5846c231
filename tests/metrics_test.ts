// First: the fake meter must be in place before lib/telemetry.ts takes its meter.
import { recorded, sumOf } from "./_fake_meter.ts";
import assert from "node:assert/strict";
import { StatusApplier } from "../lib/applier.ts";
import { ingestStatus } from "../lib/status.ts";
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
