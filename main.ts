/**
 * Entry point: opens KV once, serves, registers the queue listener at start-up (as Deno
 * Deploy requires), and shuts down cleanly on SIGTERM/SIGINT. Everything else is built by
 * createApp.
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
import {
  KvFileInUseError,
  localKvFile,
  lockKvFile,
  redactedKv,
  withoutKvCredentials,
} from "./lib/kv_file.ts";
import { InFlight, queueDrained, within } from "./lib/in_flight.ts";
import { log } from "./lib/log.ts";

/** An admin token for a run without ALLOT_TOKENS (printed once the server listens). */
function generatedAdminToken(): TokenSpec {
  const token = `allot_${encodeBase64Url(crypto.getRandomValues(new Uint8Array(24)))}`;
  return { token, role: "admin" };
}

/** Where the store is, for the start-up line (a KV Connect URL by its origin alone). */
function storeOf(kvPath: string | undefined): string {
  if (kvPath === undefined) {
    return "Deno's default: on Deno Deploy the project's KV; elsewhere a file Deno keys by this checkout's path (another checkout starts empty), so set ALLOT_KV to a path in production";
  }
  if (kvPath === ":memory:" || localKvFile(kvPath) !== null) return kvPath;
  return `KV Connect at ${new URL(kvPath).origin}`;
}

/** Prints why the process cannot start, naming the setting to fix, and exits 2. */
function cannotStart(message: string): never {
  console.error(message);
  Deno.exit(2);
}

let config;
try {
  config = loadConfigFromEnv();
} catch (error) {
  if (error instanceof ConfigError) cannotStart(error.message);
  throw error;
}

/** Why ALLOT_KV cannot be used, naming it (and not a KV Connect URL's credentials). */
function cannotOpenKv(kvPath: string | undefined, error: unknown): never {
  const why = String(error instanceof Error ? error.message : error);
  const shown = kvPath === undefined ? "(Deno's default)" : redactedKv(kvPath);
  cannotStart(
    `ALLOT_KV: cannot open ${JSON.stringify(shown)}: ${
      kvPath === undefined ? why : withoutKvCredentials(why, kvPath)
    }`,
  );
}

// Held (never closed) while the process runs: a second allot on the file stops here.
const kvFile = localKvFile(config.kvPath);
if (kvFile !== null) {
  try {
    await lockKvFile(kvFile);
  } catch (error) {
    if (error instanceof KvFileInUseError) cannotStart(error.message);
    cannotOpenKv(config.kvPath, error);
  }
}
let kv: Deno.Kv;
try {
  kv = await Deno.openKv(config.kvPath);
} catch (error) {
  cannotOpenKv(config.kvPath, error);
}
const clock = systemClock;
const applier = new StatusApplier(kv, clock);
const generated = config.tokens.length > 0 ? null : generatedAdminToken();
const tokens = TokenRegistry.from(generated ? [generated] : config.tokens);
const app = createApp({ kv, tokens, clock, applier });

// Before serving: a SIGTERM that comes once the server has said it listens must find its
// handler (without one, it kills the process outright). Handlers run only once this module
// has finished, when everything shutDown uses exists.
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  try {
    Deno.addSignalListener(signal, () => shutDown(signal));
  } catch {
    // No signals here (Deno Deploy stops isolates itself).
  }
}
// Counted so that a stop can say how many requests it answers before it exits.
const requests = new InFlight();
let server: Deno.HttpServer;
try {
  server = Deno.serve({
    port: config.port,
    onListen: ({ hostname, port }) =>
      log("info", "listening", { url: `http://${hostname}:${port}/`, kv: storeOf(config.kvPath) }),
  }, (request, info) => requests.track(Promise.resolve(app.fetch(request, info))));
} catch (error) {
  if (error instanceof Deno.errors.AddrInUse) cannotStart(`PORT: ${config.port} is already in use`);
  // A port below 1024 without the privilege, a permission Deno was not given...
  cannotStart(`PORT: cannot listen on ${config.port}: ${(error as Error).message}`);
}
if (generated) {
  // Written to stdout itself: with OTEL_DENO=true, console output is exported as logs, and
  // the token would reach the telemetry backend.
  const banner = new TextEncoder().encode(
    `No ALLOT_TOKENS configured: generated an admin token for this run (shown once):\n\n  ${generated.token}\n\n` +
      `Set ALLOT_TOKENS to choose your own, e.g. ALLOT_TOKENS='[{"token":"...","role":"admin"}]'\n`,
  );
  try {
    for (let done = 0; done < banner.length;) {
      done += Deno.stdout.writeSync(banner.subarray(done));
    }
  } catch (error) {
    // No one reads stdout any more (as console.log, go on serving).
    if (!(error instanceof Deno.errors.BrokenPipe)) throw error;
  }
}

// Expiry sweeps end leases in shared commits, like releases.
const ender = new GroupEnder(kv, clock);
const queueWork = new InFlight();
kv.listenQueue(async (message) => {
  await queueWork.track(handleQueueMessage({ kv, clock, applier, ender }, message));
});
// A region whose queue stalls still moves to fallback, and its gauges follow its lag.
const watch = watchRegions(kv, clock);

/** Longest a shutdown waits for requests, the region watch and queue handlers to finish. */
const SHUTDOWN_CAP_MS = 10_000;

/**
 * A repeat signal sooner than this is the same stop: a terminal's Ctrl-C reaches both
 * `deno task` and this process, which `deno task` then sends it again, and systemd signals
 * every process of the service.
 */
const FORCE_AFTER_MS = 1_000;

// A deploy stops the process with SIGTERM: answer what is in flight, finish the queue
// messages taken, then close the store, so no caller is left without an answer to a claim
// that committed and no message waits a minute for redelivery. A later signal forces.
let stoppingSince: number | null = null;
async function shutDown(signal: Deno.Signal): Promise<void> {
  if (stoppingSince !== null) {
    if (performance.now() - stoppingSince < FORCE_AFTER_MS) return;
    log("warn", "stop forced by a later signal", { signal });
    Deno.exit(1);
  }
  stoppingSince = performance.now();
  log("info", "stopping", { signal, requests: requests.size, queueHandlers: queueWork.size });
  // Requests first: a status batch they accept is queue work too. Then the queue.
  const finished = (async () => {
    await Promise.all([server.shutdown(), watch.stop()]);
    await queueDrained(kv, queueWork);
  })();
  // Everything under one cap: a connection that never finishes its request, or a store that
  // never answers, must not hold the process up for ever.
  const unfinished = await within(
    finished.then(() => null, (error) => `the store failed: ${error}`),
    SHUTDOWN_CAP_MS,
    `not finished after ${SHUTDOWN_CAP_MS} ms`,
  );
  if (unfinished !== null) {
    // Closing a store that does not answer would wait for it: leave without.
    log("warn", "stopped before everything finished", {
      reason: unfinished,
      queueHandlers: queueWork.size,
    });
    Deno.exit(1);
  }
  kv.close();
  log("info", "stopped");
  Deno.exit(0);
}
