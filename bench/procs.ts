/**
 * Everything a bench run starts — child processes and temp dirs — tracked in one
 * place and removed on every way out: normal end, failure, SIGINT and SIGTERM.
 */
import { fileURLToPath } from "node:url";

/** The repository root: servers run from here so they find deno.json. */
export const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Temp dirs live here (git-ignored), on the same disk as the repository. */
const TMP_BASE = `${REPO_ROOT}bench/tmp`;

/** Output kept per stream of a child; the rest is counted, not kept. */
const MAX_CAPTURE_CHARS = 256 * 1024;

/** A grace period between SIGTERM and SIGKILL. */
const STOP_GRACE_MS = 3000;

/** A child's stdout or stderr, kept up to a bound. */
class Capture {
  text = "";
  droppedChars = 0;

  append(chunk: string): void {
    const room = MAX_CAPTURE_CHARS - this.text.length;
    this.text += chunk.slice(0, Math.max(0, room));
    this.droppedChars += Math.max(0, chunk.length - room);
  }
}

/** A child process the supervisor owns. */
export interface Managed {
  readonly name: string;
  readonly pid: number;
  /** Set once the process has exited. */
  exited: Deno.CommandStatus | null;
  /** Resolves when the process has exited and its output is fully read. */
  readonly done: Promise<Deno.CommandStatus>;
  stdout(): string;
  stderr(): string;
}

interface Owned extends Managed {
  child: Deno.ChildProcess;
}

async function pump(stream: ReadableStream<Uint8Array>, capture: Capture): Promise<void> {
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) capture.append(chunk);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Owns the run's children and temp dirs; `close()` removes them all, once. */
export class Supervisor {
  #children = new Map<number, Owned>();
  #dirs = new Set<string>();
  #closing: Promise<void> | null = null;
  #onSignal = () => {
    console.error("\ninterrupted: stopping child processes and removing temp dirs");
    this.close().finally(() => Deno.exit(130));
  };

  constructor() {
    Deno.addSignalListener("SIGINT", this.#onSignal);
    Deno.addSignalListener("SIGTERM", this.#onSignal);
  }

  /** True once `close()` has begun (a signal arrived, or the run is over). */
  get closing(): boolean {
    return this.#closing !== null;
  }

  /** Starts `command` from the repository root with its output captured. */
  spawn(name: string, command: string, args: string[], env: Record<string, string> = {}): Managed {
    if (this.#closing) throw new Error(`cannot start ${name}: the run is shutting down`);
    const child = new Deno.Command(command, {
      args,
      cwd: REPO_ROOT,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const out = new Capture();
    const err = new Capture();
    const drained = Promise.all([pump(child.stdout, out), pump(child.stderr, err)]);
    const owned: Owned = {
      name,
      pid: child.pid,
      child,
      exited: null,
      done: child.status.then(async (status) => {
        owned.exited = status;
        this.#children.delete(child.pid);
        await drained;
        return status;
      }),
      stdout: () => out.text + (out.droppedChars ? `\n[${out.droppedChars} chars dropped]` : ""),
      stderr: () => err.text + (err.droppedChars ? `\n[${err.droppedChars} chars dropped]` : ""),
    };
    this.#children.set(child.pid, owned);
    return owned;
  }

  /** Stops one child by its pid: SIGTERM, then SIGKILL after a grace period. */
  async stop(managed: Managed): Promise<Deno.CommandStatus> {
    const owned = this.#children.get(managed.pid);
    if (!owned || owned.exited) return await managed.done;
    this.#signal(owned, "SIGTERM");
    const stopped = await Promise.race([owned.done, sleep(STOP_GRACE_MS).then(() => null)]);
    if (stopped) return stopped;
    this.#signal(owned, "SIGKILL");
    return await owned.done;
  }

  /** A fresh temp dir under bench/tmp, removed by `close()`. */
  async tempDir(prefix: string): Promise<string> {
    await Deno.mkdir(TMP_BASE, { recursive: true });
    const dir = await Deno.makeTempDir({ dir: TMP_BASE, prefix });
    this.#dirs.add(dir);
    return dir;
  }

  /** Stops every child still running, removes every temp dir; safe to call more than once. */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    Deno.removeSignalListener("SIGINT", this.#onSignal);
    Deno.removeSignalListener("SIGTERM", this.#onSignal);
    await Promise.all([...this.#children.values()].map((child) => this.stop(child)));
    for (const dir of this.#dirs) await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(TMP_BASE).catch(() => {}); // only when empty: another run may own the rest
  }

  #signal(owned: Owned, signal: Deno.Signal): void {
    try {
      owned.child.kill(signal);
    } catch {
      // Already exited between the check and the kill.
    }
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Describes how a child ended, with the tail of its stderr. */
export function describeExit(managed: Managed): string {
  const status = managed.exited;
  const how = status
    ? `exited with code ${status.code}${status.signal ? ` (${status.signal})` : ""}`
    : "is running";
  return `${managed.name} (pid ${managed.pid}) ${how}; stderr tail:\n${
    managed.stderr().slice(-2000)
  }`;
}

/** Polls `url` until it answers 2xx; fails if the child exits or `timeoutMs` passes. */
export async function waitForHttp(
  url: string,
  managed: Managed,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (managed.exited) throw new Error(`not ready: ${describeExit(managed)}`);
    try {
      const res = await fetch(url);
      await res.body?.cancel();
      if (res.ok) return;
    } catch {
      // Not listening yet.
    }
    await sleep(100);
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms: ${describeExit(managed)}`);
}

/** Runs a short command under the supervisor; its stdout, or null if it failed silently. */
export async function commandOutput(
  sup: Supervisor,
  command: string,
  args: string[],
): Promise<string | null> {
  try {
    const proc = sup.spawn(command, command, args);
    const status = await proc.done;
    const out = proc.stdout().trim();
    return status.success || out !== "" ? out : null; // `wrk -v` prints, then exits 1
  } catch {
    return null;
  }
}
