/** The interleaved rows must total the rounds and judge the targets on the same rounds. */
import assert from "node:assert/strict";
import { interleavedRows, type Round } from "./interleaved.ts";
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

const round = (allot: number, sqlite: number, kv: number, allotP99 = 40): Round => ({
  allot: wrk(allot, 20, allotP99),
  sqlite: wrk(sqlite, 25, 60),
  kv: { commits: 2 * kv, conflicts: 0, seconds: 2, p50Ms: 20, p99Ms: 50 },
});

Deno.test("interleavedRows() totals every round and gives each round's ratio", () => {
  const [allot, sqlite, kv] = interleavedRows(
    [round(1000, 500, 2000), round(1400, 400, 2000, 55), round(1200, 300, 2000)],
    2,
  );
  assert.equal(allot.opsPerSec, 1200);
  assert.equal(sqlite.opsPerSec, 400);
  assert.equal(kv.opsPerSec, 2000);
  assert.equal(allot.p50Ms, 20, "the median round's p50");
  assert.equal(allot.p99Ms, 55, "the worst round's p99");
  assert.deepEqual(allot.targets, [{ target: "p99 ≤ 50 ms (worst round)", met: false }]);
  assert.deepEqual(sqlite.targets, [{ target: "allot ≥ 3×", met: true }]);
  assert.deepEqual(kv.targets, [{ target: "allot ≥ 3×", met: false }]);
  assert.match(sqlite.note!, /per round 2\.00×–4\.00×, over all rounds 3\.00×\.$/);
  assert.match(kv.note!, /over all rounds 0\.60×: the 3× target needs 6,000 claim loops\/s/);
  assert.ok([allot, sqlite, kv].every((row) => row.comparedWith === "interleaved"));
});
