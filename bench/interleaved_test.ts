/** The interleaved rows must total the rounds and judge the targets on the same rounds. */
import assert from "node:assert/strict";
import { interleavedRows, type Round } from "./interleaved.ts";
import type { EngineResult } from "./engine.ts";
import type { WrkResult } from "./wrk.ts";

function wrk(loops: number, p50: number, p99: number): WrkResult {
  return {
    seconds: 2,
    requests: 4 * loops,
    claims: 2 * loops,
    releases: 2 * loops,
    statuses: { "201": 2 * loops, "204": 2 * loops },
    socketErrors: { connect: 0, read: 0, write: 0, timeout: 0 },
    latencyMs: { p50, p99, mean: p50, max: p99 },
    samples: [],
  };
}

function engine(loops: number, p99: number | null): EngineResult {
  return {
    loops: 2 * loops,
    seconds: 2,
    claimP50Ms: p99 === null ? null : 5,
    claimP99Ms: p99,
    doubleAllocations: 0,
    errors: 0,
  };
}

const round = (allot: number, sqlite: number, kv: number, allotP99 = 40): Round => ({
  allot: wrk(allot, 20, allotP99),
  allotCpuSeconds: 2,
  allotSteal: 0.03,
  sqlite: wrk(sqlite, 25, 60),
  kv: { commits: 2 * kv, conflicts: 0, seconds: 2, p50Ms: 20, p99Ms: 50 },
  engine: engine(2 * allot, 10),
  engineCpuSeconds: 1,
});

Deno.test("interleavedRows() totals every round and gives each round's ratio", () => {
  const [allot, sqlite, kv, engine] = interleavedRows(
    [round(1000, 500, 2000), round(1400, 400, 2000, 55), round(1200, 300, 2000)],
    2,
  );
  assert.equal(allot.opsPerSec, 1200);
  assert.equal(sqlite.opsPerSec, 400);
  assert.equal(kv.opsPerSec, 2000);
  assert.equal(allot.p50Ms, 20, "the median round's p50");
  assert.equal(allot.p99Ms, 55, "the worst round's p99");
  assert.deepEqual(allot.targets, [{ target: "p99 ≤ 50 ms (worst round)", met: false }]);
  assert.deepEqual(
    (allot.details.rounds as Record<string, unknown>[]).map((r) => [
      r.loopsPerSec,
      r.serverCpuSeconds,
      r.steal,
    ]),
    [[1000, 2, 0.03], [1400, 2, 0.03], [1200, 2, 0.03]],
  );
  assert.deepEqual(sqlite.targets, [{ target: "allot ≥ 3×", met: true }]);
  assert.deepEqual(kv.targets, [{ target: "allot ≥ 3×", met: false }]);
  assert.match(sqlite.note!, /per round 2\.00×–4\.00×, over all rounds 3\.00×\.$/);
  assert.match(kv.note!, /over all rounds 0\.60×: the 3× target needs 6,000 claim loops\/s/);
  assert.ok([allot, sqlite, kv, engine].every((row) => row.comparedWith === "interleaved"));
});

Deno.test("interleavedRows() sets the engine's rounds beside allot's, CPU per loop included", async (t) => {
  await t.step("totals, ratios to the anchors and CPU per loop", () => {
    const rows = interleavedRows(
      [round(1000, 500, 2000), round(1400, 400, 2000), round(1200, 300, 2000)],
      2,
    );
    const engine = rows[3];
    assert.equal(engine.scenario, "interleaved-engine");
    assert.equal(engine.opsPerSec, 2400);
    assert.equal(engine.p99Ms, 10);
    assert.equal(engine.doubleAllocations, 0);
    // allot: 3 rounds × 2 CPU s over 7,200 loops = 833 µs; engine: 3 × 1 s over 14,400 = 208 µs.
    assert.match(rows[0].note!, /server CPU per loop 833 µs\.$/);
    assert.match(
      rows[0].note!,
      /^claim loops\/s per round \(p99, server CPU per loop, steal\): 1,000 \(p99 40\.0 ms, 1,000 µs, steal 3 %\); 1,400 \(p99 40\.0 ms, 714 µs, steal 3 %\); 1,200/,
    );
    assert.match(
      engine.note!,
      /÷ SQLite anchor 6\.00×, ÷ raw KV 1\.20×; server CPU per loop 208 µs, against allot's 833 µs/,
    );
  });

  await t.step("a double allocation in any round shows in the row", () => {
    const bad = round(1000, 500, 2000);
    bad.engine.doubleAllocations = 2;
    const rows = interleavedRows([round(1000, 500, 2000), bad], 2);
    assert.equal(rows[3].doubleAllocations, 2);
  });

  await t.step("a round that measured no latency is left out, not counted as 0 ms", () => {
    const idle = round(1000, 500, 2000);
    idle.engine = engine(0, null);
    idle.kv = { commits: 0, conflicts: 0, seconds: 2, p50Ms: null, p99Ms: null };
    const [, , kv, engineRow] = interleavedRows([round(1000, 500, 2000), idle, idle], 2);
    assert.equal(engineRow.p50Ms, 5, "the median of the measured round, not of 5, 0, 0");
    assert.equal(engineRow.p99Ms, 10);
    assert.equal(kv.p50Ms, 20, "the median of the measured round, not of 20, 0, 0");
    const none = interleavedRows([idle], 2);
    assert.equal(none[3].p50Ms, null);
    assert.equal(none[3].p99Ms, null);
  });

  await t.step("CPU that could not be read in one round is unknown, not low", () => {
    const blind = round(1000, 500, 2000);
    blind.engineCpuSeconds = null;
    blind.allotCpuSeconds = null;
    blind.allotSteal = null;
    const [allot, , , engine] = interleavedRows([round(1000, 500, 2000), blind], 2);
    assert.match(allot.note!, /; 1,000 \(p99 40\.0 ms, unknown, steal unknown\);/);
    assert.match(allot.note!, /server CPU per loop unknown\.$/);
    assert.match(engine.note!, /server CPU per loop unknown, against allot's unknown/);
  });
});
