/**
 * The real allot server as a child process (`deno run -A main.ts`) on a file-backed KV:
 * started, killed with SIGKILL, restarted on the same KV file and port, stopped. Only the
 * process this module spawned is ever signalled, by its own handle.
 */
import { fileURLToPath } from "node:url";
import { join } from "node:path";

/** The repository root: the server runs from here so it finds deno.json. */
const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Bearer tokens the chaos server accepts, one per role. */
export const CHAOS_TOKENS = {
  admin: "chaos-admin-token-0000001",
  agent: "chaos-agent-token-0000001",
  client: "chaos-client-token-000001",
} as const;

const TOKEN_SPECS = [
  { token: CHAOS_TOKENS.admin, role: "admin" },
  { token: CHAOS_TOKENS.agent, role: "agent" },
  { token: CHAOS_TOKENS.client, role: "client" },
];

/** Characters of each output stream kept (the tail), for diagnosing a failed start. */
const TAIL_CHARS = 16 * 1024;
/** How long a start may take before it is reported as failed. */
const START_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 3000;

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with `promise`'s value, or null once `ms` have passed (the timer is cleared either way). */
async function orTimeout<T>(promise: Promise<T>, ms: number): Promise<T | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Servers still running; killed if this process is interrupted, so none outlives its driver. */
const children = new Set<Deno.ChildProcess>();
const INTERRUPTS: Deno.Signal[] = ["SIGINT", "SIGTERM"];

function onInterrupt(): void {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }
  Deno.exit(130);
}

function track(child: Deno.ChildProcess): void {
  if (children.size === 0) { for (const s of INTERRUPTS) Deno.addSignalListener(s, onInterrupt); }
  children.add(child);
}

function untrack(child: Deno.ChildProcess): void {
  children.delete(child);
  if (children.size === 0) {
    for (const s of INTERRUPTS) {
      Deno.removeSignalListener(s, onInterrupt);
    }
  }
}

/** The last `TAIL_CHARS` characters of a stream, read until it ends. */
class Tail {
  text = "";
  readonly done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = this.#pump(stream);
  }

  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      this.text = (this.text + chunk).slice(-TAIL_CHARS);
    }
  }
}

/** One running server process. */
interface Running {
  child: Deno.ChildProcess;
  stdout: Tail;
  stderr: Tail;
  status: Promise<Deno.CommandStatus>;
}

/** Options of a server under test. */
export interface ServerOptions {
  /** The KV file; defaults to `allot.kv` in a fresh temp dir that `close()` removes. */
  kvPath?: string;
  port?: number;
}

/**
 * A supervised allot server. `whenUp()` resolves while it serves; after `kill()` it
 * waits for the next `start()`, so clients can pause through a crash.
 */
export class ServerProcess {
  readonly port: number;
  readonly base: string;
  /** Times the process was started. */
  starts = 0;
  /** Times it was killed with SIGKILL. */
  kills = 0;
  #kvPath: string | undefined;
  #ownDir: string | null = null;
  #running: Running | null = null;
  /** The process that ran last, for its output after it ended. */
  #last: Running | null = null;
  #up = Promise.withResolvers<void>();

  constructor(options: ServerOptions = {}) {
    this.#kvPath = options.kvPath;
    this.port = options.port ?? freePort();
    this.base = `http://127.0.0.1:${this.port}`;
  }

  /** The KV file the server uses (set once started). */
  get kvPath(): string {
    if (this.#kvPath === undefined) throw new Error("the server has not been started");
    return this.#kvPath;
  }

  /** The server's process id, or null when it is not running. */
  get pid(): number | null {
    return this.#running?.child.pid ?? null;
  }

  /** Resolves once the server answers /healthz (now, or after the next start). */
  whenUp(): Promise<void> {
    return this.#up.promise;
  }

  /** Starts the server and waits until /healthz answers. */
  async start(): Promise<void> {
    if (this.#running) throw new Error("the server is already running");
    if (this.#kvPath === undefined) {
      this.#ownDir = await Deno.makeTempDir({ prefix: "allot-chaos-" });
      this.#kvPath = join(this.#ownDir, "allot.kv");
    }
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts"],
      cwd: REPO_ROOT,
      env: {
        PORT: String(this.port),
        ALLOT_KV: this.#kvPath,
        ALLOT_TOKENS: JSON.stringify(TOKEN_SPECS),
        NO_COLOR: "1",
      },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    track(child);
    const running: Running = {
      child,
      stdout: new Tail(child.stdout),
      stderr: new Tail(child.stderr),
      status: child.status,
    };
    this.#running = running;
    this.starts++;
    await this.#waitHealthy(running);
    this.#up.resolve();
  }

  /** SIGKILLs the server (no chance to flush or answer) and waits for it to be gone. */
  async kill(): Promise<void> {
    const running = this.#running;
    if (!running) return;
    this.#up = Promise.withResolvers<void>();
    this.#signal(running, "SIGKILL");
    await this.#reap(running);
    this.kills++;
  }

  /** Stops the server gracefully (SIGTERM, then SIGKILL after a grace period). */
  async stop(): Promise<void> {
    const running = this.#running;
    if (!running) return;
    this.#up = Promise.withResolvers<void>();
    this.#signal(running, "SIGTERM");
    if (await orTimeout(running.status, STOP_GRACE_MS) === null) this.#signal(running, "SIGKILL");
    await this.#reap(running);
  }

  /** Stops the server and removes the temp dir it created. */
  async close(): Promise<void> {
    await this.stop();
    if (this.#ownDir !== null) await Deno.remove(this.#ownDir, { recursive: true });
    this.#ownDir = null;
  }

  /**
   * The server's resident set size in bytes (VmRSS), or null when it is not running.
   * Deno lets only --allow-all read /proc.
   */
  async rssBytes(): Promise<number | null> {
    const pid = this.pid;
    if (pid === null) return null;
    try {
      const status = await Deno.readTextFile(`/proc/${pid}/status`);
      const kib = status.match(/^VmRSS:\s+(\d+)\s+kB/m);
      return kib ? Number(kib[1]) * 1024 : null;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return null; // it exited meanwhile
      throw error;
    }
  }

  /** The tails of the current (or last) process's stdout and stderr. */
  output(): string {
    const r = this.#running ?? this.#last;
    return r ? `--- stdout ---\n${r.stdout.text}\n--- stderr ---\n${r.stderr.text}` : "";
  }

  async #reap(running: Running): Promise<void> {
    await running.status;
    untrack(running.child);
    await Promise.all([running.stdout.done, running.stderr.done]);
    this.#last = running;
    this.#running = null;
  }

  #signal(running: Running, signal: Deno.Signal): void {
    try {
      running.child.kill(signal);
    } catch {
      // It exited between the check and the signal.
    }
  }

  async #waitHealthy(running: Running): Promise<void> {
    const deadline = Date.now() + START_TIMEOUT_MS;
    let exited = false;
    running.status.then(() => (exited = true));
    while (Date.now() < deadline && !exited) {
      try {
        const res = await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(2000) });
        await res.body?.cancel();
        if (res.ok) return;
      } catch {
        // Not listening yet.
      }
      await sleep(50);
    }
    await this.stop();
    throw new Error(`the server did not become healthy on port ${this.port}:\n${this.output()}`);
  }
}
