/**
 * Entry point: opens KV once, registers the queue listener at start-up (as Deno
 * Deploy requires), and serves. Everything else is built by createApp.
 */
import { createApp } from "./app.ts";
import { TokenRegistry } from "./lib/auth.ts";
import { ConfigError, loadConfigFromEnv, type TokenSpec } from "./lib/config.ts";
import { systemClock } from "./lib/clock.ts";
import { handleQueueMessage } from "./lib/queue.ts";
import { StatusApplier } from "./lib/applier.ts";
import { GroupEnder } from "./lib/ender.ts";
import { encodeBase64Url } from "./lib/base64.ts";
import { watchRegions } from "./lib/region_watch.ts";

function generatedAdminToken(): TokenSpec {
  const token = `allot_${encodeBase64Url(crypto.getRandomValues(new Uint8Array(24)))}`;
  console.log(
    `No ALLOT_TOKENS configured: generated an admin token for this run (shown once):\n\n  ${token}\n\n` +
      `Set ALLOT_TOKENS to choose your own, e.g. ALLOT_TOKENS='[{"token":"...","role":"admin"}]'`,
  );
  return { token, role: "admin" };
}

let config;
try {
  config = loadConfigFromEnv();
} catch (error) {
  if (error instanceof ConfigError) {
    console.error(error.message);
    Deno.exit(2);
  }
  throw error;
}

const kv = await Deno.openKv(config.kvPath);
const clock = systemClock;
const applier = new StatusApplier(kv, clock);
// Expiry sweeps end leases in shared commits, like releases.
const ender = new GroupEnder(kv, clock);
kv.listenQueue(async (message) => {
  await handleQueueMessage({ kv, clock, applier, ender }, message);
});
// A region whose queue stalls still moves to fallback, and its gauges follow its lag.
watchRegions(kv, clock);
const tokens = TokenRegistry.from(
  config.tokens.length > 0 ? config.tokens : [generatedAdminToken()],
);
const app = createApp({ kv, tokens, clock, applier });
Deno.serve({ port: config.port }, app.fetch);
