/**
 * Claims a slot, renews its lease once (the heartbeat a worker keeps up while it
 * uses the slot), and releases it, through the typed client:
 *
 *   ALLOT_URL=http://localhost:8000 ALLOT_TOKEN=<client token> \
 *     deno run --allow-net --allow-env examples/claim.ts iad
 */
import { AllotClient, LeaseLostError, NetworkError, withRetry } from "../client.ts";

const token = Deno.env.get("ALLOT_TOKEN");
if (!token) {
  console.error("Set ALLOT_TOKEN to a client token (and ALLOT_URL when not localhost:8000).");
  Deno.exit(2);
}
const region = Deno.args[0] ?? "iad";
const allot = new AllotClient(Deno.env.get("ALLOT_URL") ?? "http://localhost:8000", { token });

// One key for every attempt: if an answer is lost, the retry gets the same claim back.
const idempotencyKey = crypto.randomUUID();
const claim = await withRetry(
  () => allot.claim(region, { holder: `example-${Deno.pid}`, leaseMs: 30_000 }, { idempotencyKey }),
  {
    // Safe to repeat: the key makes a retry answer the claim a lost answer carried.
    retryNetworkErrors: true,
    onRetry: (error, attempt, delayMs) =>
      console.log(
        `${error instanceof NetworkError ? error.message : error.problem.detail}; ` +
          `attempt ${attempt + 1} in ${delayMs} ms`,
      ),
  },
);
console.log(
  `claimed ${claim.servedBy}/${claim.resource} slot ${claim.slot} (fencing token ${claim.fencingToken}) until ${claim.leaseExpiresAt}`,
);

try {
  const renewed = await allot.renew(claim, 30_000);
  console.log(`renewed until ${renewed.leaseExpiresAt}`);
  await allot.release(claim);
  console.log("released");
} catch (error) {
  if (!(error instanceof LeaseLostError)) throw error;
  // Someone may hold the slot now: stop using it, and let downstream systems reject
  // our fencing token.
  console.error(`lease lost: ${error.problem.detail}`);
  Deno.exit(1);
}
