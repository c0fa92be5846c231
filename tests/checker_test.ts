import assert from "node:assert/strict";
import { checkHistory, type HistoryEvent, type Instant, type Violation } from "./_checker.ts";

let seq = 0;
/** An operation that took place at fake time `time`, invoked and acknowledged in order. */
function at(time: number): { invoked: Instant; acked: Instant } {
  const invoked = { time, seq: seq++ };
  return { invoked, acked: { time, seq: seq++ } };
}

const token = (n: number) => n.toString(16).padStart(24, "0");

function grant(
  claimId: string,
  time: number,
  opts: { resource?: string; slot?: number; token: number; expiresAt: number; region?: string },
): HistoryEvent {
  return {
    kind: "grant",
    claimId,
    region: opts.region ?? "iad",
    resource: opts.resource ?? "r1",
    slot: opts.slot ?? 0,
    fencingToken: token(opts.token),
    expiresAt: opts.expiresAt,
    ...at(time),
  };
}

const kinds = (violations: Violation[]) => violations.map((v) => v.kind).sort();

Deno.test("checkHistory() accepts histories without violations", async (t) => {
  await t.step("release then takeover", () => {
    const a = grant("a", 0, { token: 1, expiresAt: 1000 });
    const release: HistoryEvent = { kind: "release", claimId: "a", ...at(500) };
    const b = grant("b", 500, { token: 2, expiresAt: 1500 });
    assert.deepEqual(checkHistory([a, release, b]), []);
  });

  await t.step("expiry then takeover, exactly at the expiry time", () => {
    const a = grant("a", 0, { token: 1, expiresAt: 1000 });
    const b = grant("b", 1000, { token: 2, expiresAt: 2000 });
    const lost: HistoryEvent = { kind: "ended", claimId: "a", ...at(1200) };
    assert.deepEqual(checkHistory([a, b, lost]), []);
  });

  await t.step("release acknowledged after a concurrent grant of the slot", () => {
    const a = grant("a", 0, { token: 1, expiresAt: 5000 });
    // Release invoked first; the new grant is acknowledged before the release is.
    const releaseInvoked = { time: 100, seq: seq++ };
    const b: HistoryEvent = {
      kind: "grant",
      claimId: "b",
      region: "iad",
      resource: "r1",
      slot: 0,
      fencingToken: token(2),
      expiresAt: 5100,
      ...at(100),
    };
    const release: HistoryEvent = {
      kind: "release",
      claimId: "a",
      invoked: releaseInvoked,
      acked: { time: 100, seq: seq++ },
    };
    assert.deepEqual(checkHistory([a, b, release]), []);
  });

  await t.step("different slots and resources may be held at once", () => {
    assert.deepEqual(
      checkHistory([
        grant("a", 0, { slot: 0, token: 1, expiresAt: 1000 }),
        grant("b", 0, { slot: 1, token: 2, expiresAt: 1000 }),
        grant("c", 0, { resource: "r2", token: 1, expiresAt: 1000 }),
        grant("d", 0, { region: "fra", token: 1, expiresAt: 1000 }),
      ]),
      [],
    );
  });

  await t.step("a renew extends the lease, a later takeover after the new expiry is fine", () => {
    const a = grant("a", 0, { token: 1, expiresAt: 1000 });
    const renew: HistoryEvent = { kind: "renew", claimId: "a", expiresAt: 3000, ...at(900) };
    const b = grant("b", 3000, { token: 2, expiresAt: 4000 });
    assert.deepEqual(checkHistory([a, renew, b]), []);
  });

  await t.step("a revoke ends the lease at its invocation", () => {
    const a = grant("a", 0, { token: 1, expiresAt: 10_000 });
    const revoke: HistoryEvent = { kind: "ended", claimId: "a", why: "revoked", ...at(100) };
    const b = grant("b", 100, { token: 2, expiresAt: 10_100 });
    assert.deepEqual(checkHistory([a, revoke, b]), []);
  });
});

Deno.test("checkHistory() reports a double allocation", async (t) => {
  await t.step("two unexpired grants of one slot", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 1, expiresAt: 1000 }),
      grant("b", 500, { token: 2, expiresAt: 1500 }),
    ]);
    assert.deepEqual(kinds(violations), ["double-allocation"]);
    assert.deepEqual(violations[0].claimIds.sort(), ["a", "b"]);
  });

  await t.step("a grant one millisecond before the expiry", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 1, expiresAt: 1000 }),
      grant("b", 999, { token: 2, expiresAt: 2000 }),
    ]);
    assert.deepEqual(kinds(violations), ["double-allocation"]);
  });

  await t.step("a grant after a renew that extended the lease", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 1, expiresAt: 1000 }),
      { kind: "renew", claimId: "a", expiresAt: 5000, ...at(900) },
      grant("b", 2000, { token: 2, expiresAt: 3000 }),
    ]);
    assert.deepEqual(kinds(violations), ["double-allocation"]);
  });

  await t.step("a grant acknowledged before the holder's release was invoked", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 1, expiresAt: 10_000 }),
      grant("b", 100, { token: 2, expiresAt: 10_000 }),
      { kind: "release", claimId: "a", ...at(100) },
    ]);
    assert.deepEqual(kinds(violations), ["double-allocation"]);
  });

  await t.step("three holders report every overlapping pair with the longest holder", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 1, expiresAt: 10_000 }),
      grant("b", 10, { token: 2, expiresAt: 20 }),
      grant("c", 30, { token: 3, expiresAt: 40 }),
    ]);
    assert.deepEqual(kinds(violations), ["double-allocation", "double-allocation"]);
  });
});

Deno.test("checkHistory() reports fencing tokens that do not increase per resource", async (t) => {
  await t.step("a later grant with a smaller token", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 5, expiresAt: 100 }),
      grant("b", 100, { token: 4, expiresAt: 200 }),
    ]);
    assert.deepEqual(kinds(violations), ["fencing-order"]);
  });

  await t.step("an equal token on another slot of the same resource", () => {
    const violations = checkHistory([
      grant("a", 0, { slot: 0, token: 5, expiresAt: 100 }),
      grant("b", 0, { slot: 1, token: 5, expiresAt: 100 }),
    ]);
    assert.ok(kinds(violations).includes("fencing-order"));
  });

  await t.step("tokens are compared as fixed-width strings, not numbers", () => {
    const a: HistoryEvent = { ...grant("a", 0, { token: 0, expiresAt: 100 }) } as HistoryEvent;
    const b: HistoryEvent = { ...grant("b", 100, { token: 0, expiresAt: 200 }) } as HistoryEvent;
    (a as { fencingToken: string }).fencingToken = "00000000000000000000000f";
    (b as { fencingToken: string }).fencingToken = "0000000000000000000000a0";
    assert.deepEqual(checkHistory([a, b]), []);
    (b as { fencingToken: string }).fencingToken = "0000000000000000000000";
    assert.ok(kinds(checkHistory([a, b])).includes("fencing-order"));
  });

  await t.step("a renew answering a different token", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 5, expiresAt: 100 }),
      { kind: "renew", claimId: "a", expiresAt: 200, fencingToken: token(6), ...at(50) },
    ]);
    assert.deepEqual(kinds(violations), ["fencing-order"]);
  });

  await t.step("concurrent grants on one resource may commit in either order", () => {
    const a = grant("a", 0, { slot: 0, token: 7, expiresAt: 100 });
    const b: HistoryEvent = {
      ...grant("b", 0, { slot: 1, token: 6, expiresAt: 100 }),
      invoked: a.invoked,
    } as HistoryEvent;
    assert.deepEqual(checkHistory([a, b]), []);
  });
});

Deno.test("checkHistory() reports renew or release acknowledged after the lease ended", async (t) => {
  await t.step("renew at the expiry time", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 1, expiresAt: 1000 }),
      { kind: "renew", claimId: "a", expiresAt: 2000, ...at(1000) },
    ]);
    assert.deepEqual(kinds(violations), ["acknowledged-dead-lease"]);
  });

  await t.step("release after an observed loss", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 1, expiresAt: 1000 }),
      { kind: "ended", claimId: "a", ...at(10) },
      { kind: "release", claimId: "a", ...at(20) },
    ]);
    assert.deepEqual(kinds(violations), ["acknowledged-dead-lease"]);
  });

  await t.step("renew after a release", () => {
    const violations = checkHistory([
      grant("a", 0, { token: 1, expiresAt: 1000 }),
      { kind: "release", claimId: "a", ...at(10) },
      { kind: "renew", claimId: "a", expiresAt: 2000, ...at(20) },
    ]);
    assert.deepEqual(kinds(violations), ["acknowledged-dead-lease"]);
  });

  await t.step("events of a claim never granted", () => {
    const violations = checkHistory([{ kind: "release", claimId: "x", ...at(0) }]);
    assert.deepEqual(kinds(violations), ["malformed-history"]);
  });
});
