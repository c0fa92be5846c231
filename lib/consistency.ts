/**
 * Read-your-writes over eventually consistent reads. Every write blind-sets its
 * region's write mark, so the mark's versionstamp is at least that of any write to
 * the region a replica has applied. A read that presents a consistency token is
 * served eventually only when the replica's mark has reached the token; otherwise
 * it waits a little for the replica, then falls back to a strong read. Never stale.
 */
import { keys } from "./keys.ts";

/** How a read was finally served. */
export type ServedConsistency = "eventual" | "strong";

/** How long, in all, a read waits for a lagging replica before reading strongly. */
export const CATCH_UP_BUDGET_MS = 150;
const CATCH_UP_STEP_MS = 25;

/**
 * Runs `read` at the weakest consistency that still reflects `token` for `region`.
 * Without a token the read is strong. Marks are read before the data: a replica
 * only moves forward, so data read after a fresh enough mark is fresh enough too.
 */
export async function readYourWrites<T>(
  kv: Deno.Kv,
  region: string,
  token: string | undefined,
  read: (consistency: Deno.KvConsistencyLevel) => Promise<T>,
): Promise<{ value: T; consistency: ServedConsistency }> {
  if (token === undefined) return { value: await read("strong"), consistency: "strong" };
  for (let waited = 0; waited <= CATCH_UP_BUDGET_MS; waited += CATCH_UP_STEP_MS) {
    const mark = await kv.get(keys.writeMark(region), { consistency: "eventual" });
    if (mark.versionstamp !== null && mark.versionstamp >= token) {
      return { value: await read("eventual"), consistency: "eventual" };
    }
    await new Promise((resolve) => setTimeout(resolve, CATCH_UP_STEP_MS));
  }
  return { value: await read("strong"), consistency: "strong" };
}
