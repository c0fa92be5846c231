/**
 * Crash and restart, CI-sized: the real server (a child process on a file-backed KV) under
 * concurrent claims, renews, releases and status batches, SIGKILLed a few times and
 * restarted; then the history checker and the audits of chaos/ (see chaos/chaos.ts; the
 * longer run is `deno task chaos`). ALLOT_CHAOS_SEED=<n> varies or replays the run.
 */
import assert from "node:assert/strict";
import { formatChaos, runChaos } from "../chaos/chaos.ts";
import { checkHistory, type HistoryEvent, type Instant } from "./_checker.ts";

const SEED = Number(Deno.env.get("ALLOT_CHAOS_SEED") ?? 0xc4a05);

let seq = 0;
/** An operation invoked and acknowledged at `time`. */
function at(time: number): { invoked: Instant; acked: Instant } {
  const invoked = { time, seq: seq++ };
  return { invoked, acked: { time, seq: seq++ } };
}

function grant(claimId: string, time: number, token: number, expiresAt: number): HistoryEvent {
  return {
    kind: "grant",
    claimId,
    region: "iad",
    resource: "r1",
    slot: 0,
    fencingToken: token.toString(16).padStart(24, "0"),
    expiresAt,
    ...at(time),
  };
}

Deno.test("checkHistory() counts an unanswered release or renew as a possible end of the lease", () => {
  const a = grant("a", 0, 1, 10_000);
  const b = grant("b", 200, 2, 10_200);
  assert.deepEqual(checkHistory([a, b]).map((v) => v.kind), ["double-allocation"]);
  const unanswered: HistoryEvent = { kind: "uncertain", claimId: "a", ...at(100) };
  assert.deepEqual(checkHistory([a, unanswered, b]), []);
  // Before the unanswered operation was sent, the lease was still certainly live.
  const early = grant("c", 50, 3, 10_050);
  assert.deepEqual(checkHistory([a, early, unanswered]).map((v) => v.kind), [
    "double-allocation",
  ]);
});

Deno.test("checkHistory() still checks a release resent after an unanswered one", () => {
  const a = grant("a", 0, 1, 1000);
  const unanswered: HistoryEvent = { kind: "uncertain", claimId: "a", ...at(100) };
  const resentInTime: HistoryEvent = { kind: "release", claimId: "a", ...at(500) };
  assert.deepEqual(checkHistory([a, unanswered, resentInTime]), []);
  const resentTooLate: HistoryEvent = { kind: "release", claimId: "a", ...at(1500) };
  assert.deepEqual(checkHistory([a, unanswered, resentTooLate]).map((v) => v.kind), [
    "acknowledged-dead-lease",
  ]);
});

Deno.test("the real server, SIGKILLed and restarted under load, loses nothing and never double-allocates", async () => {
  const result = await runChaos({ crashes: 3, seconds: 10, holders: 12, seed: SEED });
  console.log(formatChaos(result));
  assert.deepEqual(result.violations, [], `seed ${SEED}`);
  assert.equal(result.crashes, 3);
  assert.equal(result.crashesSurvived, 3);
  // The run exercised what it claims to (bounds that do not depend on the machine's speed).
  assert.ok(
    result.grants > 0 && result.releases > 0 && result.statusBatches > 0,
    formatChaos(result),
  );
  assert.ok((result.counts["renew 200"] ?? 0) > 0, formatChaos(result));
});
