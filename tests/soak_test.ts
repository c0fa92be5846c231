import assert from "node:assert/strict";
import { memoryTrend, type SoakSample } from "../chaos/soak.ts";

const MiB = 2 ** 20;
/** Samples every 5 s for 10 minutes, RSS given by `mib(at)` in MiB. */
function run(mib: (at: number) => number): SoakSample[] {
  return Array.from({ length: 120 }, (_, i) => {
    const at = (i + 1) * 5;
    return { at, rssBytes: Math.round(mib(at) * MiB), lagMs: 0, pending: 0 };
  });
}
/** ±1 MiB of deterministic wobble. */
const wobble = (at: number) => Math.sin(at * 7.3);

Deno.test("the soak's memory judge", async (t) => {
  await t.step("passes memory that steps up once and then stays", () => {
    const trend = memoryTrend(run((at) => (at < 190 ? 116 : 145) + wobble(at)), 0.05);
    assert.ok(trend.growth > 0.2, "the step shows in the growth after warm-up");
    assert.ok(Math.abs(trend.tailGrowth) < 0.01, String(trend.tailGrowth));
    assert.equal(trend.flat, true);
  });

  await t.step("fails a leak that grows to the end, even a slow one", () => {
    // 12 % over 10 minutes: about 5.6 % over the second half.
    const trend = memoryTrend(run((at) => 120 + (at / 600) * 14.4 + wobble(at)), 0.05);
    assert.ok(trend.tailGrowth > 0.05, String(trend.tailGrowth));
    assert.equal(trend.flat, false);
  });

  await t.step("is not moved by a few spikes in the second half", () => {
    const spikes = new Set([400, 450, 590]);
    const trend = memoryTrend(run((at) => (spikes.has(at) ? 190 : 130) + wobble(at)), 0.05);
    assert.ok(Math.abs(trend.tailGrowth) < 0.01, String(trend.tailGrowth));
    assert.equal(trend.flat, true);
  });

  await t.step("passes memory that shrinks", () => {
    assert.equal(memoryTrend(run((at) => 150 - at / 20), 0.05).flat, true);
  });
});
