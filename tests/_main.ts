/** A real main.ts process for the tests that need one (deploy_test.ts, otel_test.ts). */
export const ROOT = new URL("..", import.meta.url);
export const ADMIN = "deploy-admin-token-0001";
export const CLIENT = "deploy-client-token-001";
export const AGENT = "deploy-agent-token-0001";

/**
 * Starts main.ts as Deno Deploy runs it: network, environment and reading its own
 * files only (no --allow-run), configured by the environment alone (plus `env`), on a
 * port the system picks. Its KV is in memory, or the file `kvPath` (which alone it may
 * write).
 */
export async function startMain(kvPath?: string, env: Record<string, string> = {}) {
  const write = kvPath === undefined ? [] : [`--allow-write=${kvPath}`];
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", "--allow-read", ...write, "main.ts"],
    cwd: ROOT,
    env: {
      ALLOT_KV: kvPath ?? ":memory:",
      PORT: "0",
      ALLOT_TOKENS: JSON.stringify([
        { token: ADMIN, role: "admin" },
        { token: CLIENT, role: "client" },
        { token: AGENT, role: "agent" },
      ]),
      NO_COLOR: "1",
      ...env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let output = "";
  const port = Promise.withResolvers<number>();
  // Keep draining both streams so the server never blocks on a full pipe.
  const drained = Promise.all([child.stdout, child.stderr].map(async (stream) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      output += chunk;
      const listening = output.match(/"msg":"listening","url":"http:\/\/[^"]+:(\d+)\/"/);
      if (listening) port.resolve(Number(listening[1]));
    }
  })).then(() => port.reject(new Error(`main.ts exited before listening:\n${output}`)));
  const timer = setTimeout(
    () => port.reject(new Error(`no "listening" line in 20 s:\n${output}`)),
    20_000,
  );
  try {
    const base = `http://127.0.0.1:${await port.promise}`;
    return {
      base,
      output: () => output,
      /** Sends `signal`, without waiting for the process to end. */
      signal: (signal: Deno.Signal) => child.kill(signal),
      /** Resolves with the exit status once the process has ended. */
      exited: async () => {
        const status = await child.status;
        await drained;
        return status;
      },
      /** Sends `signal` and resolves with the exit status. */
      stop: async (signal: Deno.Signal) => {
        child.kill(signal);
        const status = await child.status;
        await drained;
        return status;
      },
      request: (method: string, path: string, token?: string, body?: unknown) =>
        fetch(`${base}${path}`, {
          method,
          headers: {
            ...(token ? { authorization: `Bearer ${token}` } : {}),
            ...(body === undefined ? {} : { "content-type": "application/json" }),
          },
          body: body === undefined ? undefined : JSON.stringify(body),
        }),
      async [Symbol.asyncDispose]() {
        try {
          child.kill("SIGTERM");
        } catch {
          // already stopped
        }
        await child.status;
        await drained;
      },
    };
  } catch (error) {
    child.kill("SIGKILL");
    await child.status;
    throw error;
  } finally {
    clearTimeout(timer);
  }
}
