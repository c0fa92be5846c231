/** The double-allocation checker must catch what it claims to catch, and nothing else. */
import assert from "node:assert/strict";
import { type CheckerRun, compareTokens, type Hold, verify } from "./checker.ts";

function hold(over: Partial<Hold>): Hold {
  return {
    resource: "r-1",
    slot: 0,
    fencingToken: "0001",
    claimSentAt: 0,
    grantedAt: 1,
    releaseSentAt: 10,
    releasedAt: 11,
    ...over,
  };
}

function run(holds: Hold[]): CheckerRun {
  return {
    workers: 2,
    seconds: 1,
    holds,
    claimLatencyMs: holds.map((h) => h.grantedAt - h.claimSentAt),
    statuses: { 201: holds.length },
    transportErrors: 0,
    samples: [],
  };
}

Deno.test("checker: a slot granted while another hold of it was certainly live is a double allocation", () => {
  const verdict = verify(run([
    hold({ fencingToken: "0001", grantedAt: 1, releaseSentAt: 10 }),
    hold({ fencingToken: "0002", claimSentAt: 4, grantedAt: 5, releaseSentAt: 20 }),
  ]));
  assert.equal(verdict.doubleAllocations, 1);
  assert.equal(verdict.fencingViolations, 0);
});

Deno.test("checker: a slot re-granted before the old holder read its 204 is not flagged", () => {
  const verdict = verify(run([
    hold({ fencingToken: "0001", grantedAt: 1, releaseSentAt: 10, releasedAt: 15 }),
    hold({ fencingToken: "0002", claimSentAt: 9, grantedAt: 12, releaseSentAt: 20 }),
  ]));
  assert.equal(verdict.doubleAllocations, 0);
  assert.equal(verdict.fencingViolations, 0);
});

Deno.test("checker: other slots and resources never overlap each other", () => {
  const verdict = verify(run([
    hold({ slot: 0, fencingToken: "0001" }),
    hold({ slot: 1, fencingToken: "0002" }),
    hold({ resource: "r-2", fencingToken: "0001" }),
  ]));
  assert.equal(verdict.doubleAllocations, 0);
  assert.equal(verdict.fencingViolations, 0);
  assert.equal(verdict.slotsUsed, 3);
});

Deno.test("checker: a later claim with a smaller or repeated fencing token is a violation", () => {
  const regress = verify(run([
    hold({ fencingToken: "0005", grantedAt: 1, releaseSentAt: 2 }),
    hold({ fencingToken: "0004", claimSentAt: 3, grantedAt: 4, releaseSentAt: 5 }),
  ]));
  assert.equal(regress.fencingViolations, 1);
  const repeat = verify(run([
    hold({ slot: 0, fencingToken: "0007" }),
    hold({ slot: 1, fencingToken: "0007" }),
  ]));
  assert.equal(repeat.fencingViolations, 1);
});

Deno.test("checker: unacknowledged releases are counted", () => {
  assert.equal(verify(run([hold({ releasedAt: null })])).unreleased, 1);
});

Deno.test("checker: fencing tokens order by length, then text (hex or decimal)", () => {
  assert.ok(compareTokens("9", "10") < 0);
  assert.ok(compareTokens("00000000000000ff0000", "0000000000000100000a") < 0);
  assert.equal(compareTokens("abc", "abc"), 0);
});
