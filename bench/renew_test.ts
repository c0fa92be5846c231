/** The renew scenario's rows: totals over the rounds, and what grouping paid. */
import assert from "node:assert/strict";
import type { RenewResult } from "./engine.ts";
import { renewRows } from "./renew.ts";

const run = (renews: number, seconds: number, p99Ms: number | null, group: boolean) =>
  ({
    renews,
    seconds,
    p50Ms: p99Ms === null ? null : p99Ms / 2,
    p99Ms,
    errors: 0,
    group: group ? { commits: renews / 40, renewed: renews, alone: 1 } : null,
  }) satisfies RenewResult;

Deno.test("renewRows() totals each way over its rounds and says what grouping paid", () => {
  const [group, alone] = renewRows(
    [run(4000, 1, 40, true), run(8000, 3, 30, true)],
    [run(500, 1, 120, false), run(1000, 3, null, false)],
    1,
  );
  assert.equal(group.scenario, "renew-group");
  assert.equal(group.opsPerSec, 3000);
  assert.equal(group.p99Ms, 40, "the worst round's p99");
  assert.equal(alone.opsPerSec, 375);
  assert.equal(alone.p99Ms, 120, "a round without a renew has no p99 and is left out");
  assert.match(group.note!, /4,000, 2,667; 8\.00× renewing alone/);
  assert.match(group.note!, /40\.0 renews per commit; 2 settled alone/);
  assert.match(alone.note!, /500, 333; one commit per renew/);
});
