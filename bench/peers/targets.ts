/**
 * The targets against the peers, as notes under the table: allot's claim
 * loops/s ≥ 1.2× PostgreSQL's durable figure and, as a stretch, ≥ Redis with
 * `appendfsync always`, at 0 double allocations and a claim p99 ≤ 50 ms. Where a
 * target is missed, the note says by how much.
 */
import type { RatedRow } from "../report.ts";
import { count } from "./common.ts";

/** The claim p99 allot must stay under, ms. */
export const CLAIM_P99_MS = 50;

function against(allot: RatedRow, peer: RatedRow | undefined, factor: number, name: string) {
  if (!peer || peer.opsPerSec <= 0) return [];
  const ratio = allot.opsPerSec / peer.opsPerSec;
  const want = factor * peer.opsPerSec;
  const verdict = ratio >= factor
    ? "met"
    : `missed: allot would need ${count.format(want)} loops/s, ${
      (want / allot.opsPerSec).toFixed(1)
    }× its own`;
  return [
    `- target allot ≥ ${factor.toFixed(2)}× ${name}: allot's ${count.format(allot.opsPerSec)} ` +
    `claim loops/s are ${ratio.toFixed(2)}× ${name}'s ${
      count.format(peer.opsPerSec)
    } — ${verdict}.`,
  ];
}

/** Notes on the peer targets; none when allot or both peers were not in the run. */
export function peerTargetNotes(rows: RatedRow[]): string[] {
  const allot = rows.find((r) => r.scenario === "allot");
  const postgres = rows.find((r) => r.scenario === "postgres");
  const redis = rows.find((r) => r.scenario === "redis");
  if (!allot || (!postgres && !redis)) return [];
  const notes = [
    ...against(allot, postgres, 1.2, "PostgreSQL (durable)"),
    ...against(allot, redis, 1, "Redis (appendfsync always; stretch)"),
  ];
  const checker = rows.find((r) => r.scenario === "allot-checker");
  if (checker) {
    const p99 = checker.p99Ms;
    const p99Verdict = p99 === null
      ? "not measured"
      : `${p99.toFixed(1)} ms — ${p99 <= CLAIM_P99_MS ? "met" : "missed"}`;
    notes.push(
      `- target claim p99 ≤ ${CLAIM_P99_MS} ms at 0 double allocations: allot's checker ` +
        `claim p99 ${p99Verdict} (wrk's p99 over claims and releases: ` +
        `${allot.p99Ms?.toFixed(1) ?? "—"} ms); ${checker.doubleAllocations} double allocations.`,
    );
  }
  return notes;
}
