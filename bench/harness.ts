/**
 * What the scenarios share: a server script started on a free port and stopped
 * afterwards; an allot server (main.ts or a bench-owned script) on a file-backed KV in
 * a temp dir, its tokens, its /v1/stats, and its memory as /proc reports it.
 */
import type { BenchContext } from "./scenarios.ts";
import {
  commandOutput,
  describeExit,
  freePort,
  type Managed,
  REPO_ROOT,
  waitForHttp,
} from "./procs.ts";
import type { SeedTarget } from "./seed.ts";

/** Tokens of every allot server these scenarios start. */
export const TOKENS = {
  admin: "bench-admin-token-0000001",
  agent: "bench-agent-token-0000001",
  client: "bench-client-token-000001",
} as const;

/** A started allot server. */
export interface AllotServer {
  server: Managed;
  baseUrl: string;
  /** As the admin (seeding, region health, /v1/stats). */
  admin: SeedTarget;
}

/**
 * The V8 flags `deno task start` runs allot with, read from deno.json so
 * the bench always measures the server as it is started, not a variant of it.
 */
export const ALLOT_V8_FLAGS: string[] = (
  JSON.parse(Deno.readTextFileSync(`${REPO_ROOT}deno.json`)).tasks.start as string
).split(/\s+/).filter((arg) => arg.startsWith("--v8-flags="));

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Starts a Deno script as a server on a free port and waits for its /healthz. */
export async function startServer(
  ctx: BenchContext,
  name: string,
  script: string,
  env: Record<string, string>,
  flags: string[] = [],
): Promise<{ server: Managed; baseUrl: string }> {
  const port = freePort();
  const server = ctx.sup.spawn(name, Deno.execPath(), ["run", "-A", ...flags, script], {
    ...env,
    PORT: String(port),
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  try {
    await waitForHttp(`${baseUrl}/healthz`, server);
  } catch (error) {
    await ctx.sup.stop(server);
    throw error;
  }
  return { server, baseUrl };
}

/**
 * Runs `body` against a started server and stops the server afterwards. A failure is
 * rethrown with the server's state and stderr, which usually say why.
 */
export async function withServer<T>(
  ctx: BenchContext,
  server: Managed,
  body: () => Promise<T>,
): Promise<T> {
  try {
    return await body();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`${message}\n${describeExit(server)}`, { cause: error });
  } finally {
    await ctx.sup.stop(server);
  }
}

/**
 * Starts `script` (main.ts, or a bench server built like it) with ALLOT_KV in a fresh
 * temp dir, the three bench tokens, a free port and any `env` of its own, and waits for
 * /healthz.
 */
export async function startAllot(
  ctx: BenchContext,
  name: string,
  script: string,
  env: Record<string, string> = {},
): Promise<AllotServer> {
  const dir = await ctx.sup.tempDir(`${name}-`);
  const { server, baseUrl } = await startServer(ctx, name, script, {
    ...env,
    ALLOT_KV: `${dir}/allot.kv`,
    ALLOT_TOKENS: JSON.stringify([
      { token: TOKENS.admin, role: "admin" },
      { token: TOKENS.agent, role: "agent" },
      { token: TOKENS.client, role: "client" },
    ]),
  }, ALLOT_V8_FLAGS);
  return { server, baseUrl, admin: { baseUrl, token: TOKENS.admin } };
}

/** Runs `body`, then stops the server; a failure carries the server's state and stderr. */
export function withAllot<T>(
  ctx: BenchContext,
  allot: AllotServer,
  body: () => Promise<T>,
): Promise<T> {
  return withServer(ctx, allot.server, body);
}

/** Throws if the server has exited. */
export function assertRunning(allot: AllotServer): void {
  if (allot.server.exited) throw new Error(`server died: ${describeExit(allot.server)}`);
}

/** Server stderr worth keeping: anything but Deno.serve's "Listening on" line. */
export function serverStderr(allot: AllotServer): string | undefined {
  const text = allot.server.stderr().split("\n")
    .filter((line) => line.trim() !== "" && !line.startsWith("Listening on "))
    .join("\n");
  return text === "" ? undefined : text.slice(0, 8000);
}

/** GET /v1/stats's status-apply counters (the isolate's queue consumer). */
export interface ApplyCounters {
  commits: number;
  updates: number;
  effective: number;
  messages: number;
  conflicts: number;
}

/** GET /v1/stats (admin); the status part. */
export async function applyCounters(allot: AllotServer): Promise<ApplyCounters> {
  const res = await fetch(`${allot.baseUrl}/v1/stats`, {
    headers: { authorization: `Bearer ${TOKENS.admin}` },
  });
  if (!res.ok) throw new Error(`GET /v1/stats: ${res.status} ${await res.text()}`);
  const { status } = await res.json();
  if (status === null) throw new Error("GET /v1/stats: this server runs no queue consumer");
  return status;
}

/** A process's resident memory, from /proc/<pid>/status, in kB. */
export interface Memory {
  /** VmRSS: resident now. */
  rssKb: number;
  /** VmHWM: the peak resident size since the process started. */
  hwmKb: number;
}

/**
 * Reads /proc/<pid>/status through `cat` (Deno wants --allow-all to read /proc; the
 * bench has --allow-run). Null when it could not be read (the process is gone).
 */
export async function readMemory(ctx: BenchContext, pid: number): Promise<Memory | null> {
  const text = await commandOutput(ctx.sup, "cat", [`/proc/${pid}/status`]);
  const field = (name: string) =>
    Number(text?.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"))?.[1]);
  const rssKb = field("VmRSS");
  const hwmKb = field("VmHWM");
  return Number.isFinite(rssKb) && Number.isFinite(hwmKb) ? { rssKb, hwmKb } : null;
}

/** kB (as /proc counts, 1,024 bytes) to MB of 10^6 bytes. */
export function kbToMb(kb: number): number {
  return (kb * 1024) / 1e6;
}
