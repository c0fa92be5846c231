/**
 * The PostgreSQL peer's recording client: `workers` connections (npm:postgres, one
 * reserved connection each) loop claim → hold 0..maxHoldMs → release with the same
 * statements as bench/pgbench_claim.sql, recording every grant for bench/checker.ts.
 * Writes the CheckerRun as JSON to `out` and prints `RESULT {grants}`.
 *
 *   deno run -A bench/peers/pg_record.ts <postgres url> <seconds> <workers> <maxHoldMs> <out>
 */
import postgres from "npm:postgres@3.4.9";
import { type CheckerRun, emptyRun, type Hold } from "../checker.ts";

const BACKOFF_MS = 50;
const MAX_SAMPLES = 5;

const CLAIM_SQL = "UPDATE pool SET holder = $1, fencing = nextval('fence') " +
  "WHERE id = (SELECT id FROM pool WHERE holder IS NULL LIMIT 1 FOR UPDATE SKIP LOCKED) " +
  "RETURNING id, fencing";
const RELEASE_SQL = "UPDATE pool SET holder = NULL WHERE id = $1 AND holder = $2";

type Sql = ReturnType<typeof postgres>;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function note(run: CheckerRun, status: string): void {
  run.statuses[status] = (run.statuses[status] ?? 0) + 1;
}

async function worker(
  sql: Sql,
  run: CheckerRun,
  holder: string,
  maxHoldMs: number,
  deadline: number,
): Promise<void> {
  const db = await sql.reserve();
  try {
    while (performance.now() < deadline) {
      try {
        const claimSentAt = performance.now();
        const rows = await db.unsafe(CLAIM_SQL, [holder], { prepare: true });
        const grantedAt = performance.now();
        if (rows.length !== 1) {
          note(run, "no free row");
          await sleep(BACKOFF_MS);
          continue;
        }
        note(run, "claimed");
        run.claimLatencyMs.push(grantedAt - claimSentAt);
        const { id, fencing } = rows[0];
        await sleep(Math.random() * maxHoldMs);
        const releaseSentAt = performance.now();
        const released = await db.unsafe(RELEASE_SQL, [id, holder], { prepare: true });
        const releasedAt = released.count === 1 ? performance.now() : null;
        note(run, releasedAt === null ? "release matched no row" : "released");
        const hold: Hold = {
          resource: String(id),
          slot: 0,
          fencingToken: String(fencing),
          claimSentAt,
          grantedAt,
          releaseSentAt,
          releasedAt,
        };
        run.holds.push(hold);
      } catch (error) {
        run.transportErrors++;
        if (run.samples.length < MAX_SAMPLES) run.samples.push(String(error).slice(0, 400));
        await sleep(BACKOFF_MS);
      }
    }
  } finally {
    db.release();
  }
}

async function main(): Promise<void> {
  const [url, seconds, workers, maxHoldMs, out] = Deno.args;
  const n = Number(workers);
  const sql = postgres(url, { max: n, onnotice: () => {} });
  const run = emptyRun(n);
  try {
    // Open every connection before the clock starts, as pgbench does.
    await Promise.all(Array.from({ length: n }, () => sql`SELECT 1`));
    const start = performance.now();
    const deadline = start + Number(seconds) * 1000;
    await Promise.all(
      Array.from(
        { length: n },
        (_, i) => worker(sql, run, `checker-${i}`, Number(maxHoldMs), deadline),
      ),
    );
    run.seconds = (performance.now() - start) / 1000;
  } finally {
    await sql.end({ timeout: 5 });
  }
  await Deno.writeTextFile(out, JSON.stringify(run));
  console.log(`RESULT ${JSON.stringify({ grants: run.holds.length })}`);
}

if (import.meta.main) await main();
