import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { ADMIN, AGENT, CLIENT, ROOT, startMain } from "./_main.ts";

Deno.test("main.ts serves health, claims and status with only the permissions Deno Deploy grants", async () => {
  await using main = await startMain();
  const listening = main.output().split("\n").find((line) => line.includes('"msg":"listening"'));
  assert.ok(listening, main.output());
  const started = JSON.parse(listening);
  assert.deepEqual(
    [started.level, started.kv],
    ["info", ":memory:"],
    "a JSON line naming the store",
  );
  assert.match(started.url, /^http:\/\/0\.0\.0\.0:\d+\/$/);
  const health = await main.request("GET", "/healthz");
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: "ok" });
  const ready = await main.request("GET", "/readyz");
  assert.equal(ready.status, 200);
  await ready.body?.cancel();

  const region = await main.request("PUT", "/v1/regions/iad", ADMIN, {});
  assert.equal(region.status, 201, await region.text());
  const resource = await main.request("PUT", "/v1/regions/iad/resources/r0", ADMIN, {});
  assert.equal(resource.status, 201, await resource.text());
  const claim = await main.request("POST", "/v1/regions/iad/claims", CLIENT, { holder: "h" });
  const grant = await claim.json();
  assert.equal(claim.status, 201, JSON.stringify(grant));
  const read = await main.request("GET", `/v1/claims/${grant.id}`, CLIENT);
  assert.equal((await read.json()).state, "active");

  // The queue listener registered at start-up applies a status batch.
  const status = await main.request("POST", "/v1/regions/iad/status", AGENT, {
    updates: [{ resource: "r0", seq: 1, state: "ready", load: 0.25 }],
  });
  assert.equal(status.status, 202, await status.text());
  let pending = -1;
  for (const deadline = Date.now() + 10_000; Date.now() < deadline;) {
    pending = (await (await main.request("GET", "/v1/regions/iad", ADMIN)).json()).pending;
    if (pending === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(pending, 0, "the status batch was applied");
  const applied = await main.request("GET", "/v1/regions/iad/resources/r0", ADMIN);
  assert.equal((await applied.json()).load, 0.25);

  // The dashboard's script is read from the deployment's own files.
  for (const path of ["/", "/dashboard.js", "/docs", "/openapi.json"]) {
    const page = await main.request("GET", path);
    assert.equal(page.status, 200, path);
    await page.body?.cancel();
  }
  assert.doesNotMatch(main.output(), /PermissionDenied|NotCapable|Requires (write|run) access/);
});

Deno.test("on SIGTERM and SIGINT main.ts answers every claim it commits, then exits 0", async (t) => {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    await t.step(signal, async () => {
      await withKvFile(async (kvPath) => {
        const { answers, handling } = await claimThroughShutdown(kvPath, signal);
        // Every request the server was handling at the signal is answered. One it had not
        // begun reading fails on the client's side (the usual keep-alive race, which the
        // claim's Idempotency-Key is for), and must then not have been committed either. A
        // process that dropped the work in flight answered none of it: in eight runs, 40 to
        // 59 of the 60 claims went unanswered (a loaded machine delays their sending too).
        const answered = answers.filter((answer) => typeof answer === "number").length;
        assert.ok(answered >= handling, `${handling} in flight: ${JSON.stringify(answers)}`);
        await using after = await startMain(kvPath);
        const listed = await after.request("GET", "/v1/regions/iad/claims?limit=100", ADMIN);
        const page = await listed.json();
        assert.equal(listed.status, 200, JSON.stringify(page));
        const committed = page.items.map((claim: { holder: string }) => claim.holder).sort();
        const granted = answers.flatMap((answer, i) => answer === 201 ? [`h${i}`] : []).sort();
        assert.deepEqual(committed, granted, `answers: ${JSON.stringify(answers)}`);
        for (const answer of answers) {
          assert.ok(typeof answer === "string" || answer === 201 || answer === 503, `${answer}`);
        }
      });
    });
  }
});

/** Resolves once `output()` matches `pattern`; fails after 10 s. */
async function outputMatches(output: () => string, pattern: RegExp): Promise<void> {
  for (let waited = 0; !pattern.test(output()); waited += 20) {
    if (waited > 10_000) throw new Error(`no ${pattern} in 10 s:\n${output()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Runs `use` with the path of a KV file in a fresh temp dir, removed afterwards. */
async function withKvFile(use: (kvPath: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await use(`${dir}/kv.sqlite`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Runs `use` while another program holds a write transaction on the KV file (a backup tool,
 * a curious operator's sqlite3).
 */
async function whileAnotherWrites(kvPath: string, use: () => Promise<void>): Promise<void> {
  const other = new DatabaseSync(kvPath);
  other.exec("BEGIN IMMEDIATE");
  try {
    await use();
  } finally {
    other.exec("ROLLBACK");
    other.close();
  }
}

/**
 * Queue messages taken but unfinished: rows of Deno KV's own `queue_running` table, read
 * from its SQLite file once its process has exited.
 */
function takenUnfinished(path: string): number {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    return (db.prepare("SELECT count(*) AS n FROM queue_running").get() as { n: number }).n;
  } finally {
    db.close();
  }
}

Deno.test("on SIGTERM main.ts works off the status messages it has taken before it exits, and logs both ends", async () => {
  await withKvFile(async (kvPath) => {
    const main = await startMain(kvPath);
    assert.equal((await main.request("PUT", "/v1/regions/iad", ADMIN, {})).status, 201);
    for (let r = 0; r < 20; r++) {
      const put = await main.request("PUT", `/v1/regions/iad/resources/r${r}`, ADMIN, {});
      assert.equal(put.status, 201);
    }
    // A backlog of queue messages, many of them in their handlers when the signal comes.
    let seq = 1;
    const batches = Array.from({ length: 60 }, () => ({
      updates: Array.from({ length: 500 }, (_, i) => ({
        resource: `r${i % 20}`,
        seq: seq++,
        state: "ready",
        load: 0.5,
      })),
    }));
    for (let i = 0; i < batches.length; i += 12) {
      const posted = await Promise.all(
        batches.slice(i, i + 12).map((batch) =>
          main.request("POST", "/v1/regions/iad/status", AGENT, batch)
        ),
      );
      for (const res of posted) assert.equal(res.status, 202, await res.text());
    }
    const status = await main.stop("SIGTERM");
    assert.equal(status.code, 0, main.output());
    assert.match(main.output(), /"msg":"stopping","signal":"SIGTERM"/);
    assert.match(main.output(), /"msg":"stopped"/);
    // A message whose handler was cut off by closing the store is redelivered only after
    // about a minute, which holds the region's lag up (into fallback) across a routine
    // restart. Without waiting for the handlers, 14 to 24 were left.
    assert.equal(takenUnfinished(kvPath), 0, "no message left taken and unfinished");
  });
});

Deno.test("a signal repeated within a second is the same stop; one a second later forces the exit", async (t) => {
  await withKvFile(async (kvPath) => {
    await t.step("Ctrl-C under `deno task`: the same SIGINT twice, a graceful stop", async () => {
      const main = await startMain(kvPath);
      // The lock holds the stop at its last commit until it is released.
      await whileAnotherWrites(kvPath, async () => {
        main.signal("SIGINT");
        await outputMatches(main.output, /"msg":"stopping"/);
        main.signal("SIGINT"); // `deno task` passing the terminal's Ctrl-C on
        await new Promise((resolve) => setTimeout(resolve, 100));
      });
      const status = await main.exited();
      assert.equal(status.code, 0, main.output());
      assert.match(main.output(), /"msg":"stopped"/);
    });
    await t.step("a second signal while the stop waits on a locked store", async () => {
      const main = await startMain(kvPath);
      // The stop's last commit waits for the lock (SQLite: 5 s).
      await whileAnotherWrites(kvPath, async () => {
        main.signal("SIGTERM");
        await new Promise((resolve) => setTimeout(resolve, 1_200));
        const status = await main.stop("SIGTERM");
        assert.equal(status.code, 1, main.output());
        assert.match(main.output(), /"msg":"stopping"/);
        assert.match(main.output(), /"msg":"stop forced by a later signal","signal":"SIGTERM"/);
        assert.doesNotMatch(main.output(), /"msg":"stopped/, "forced: it did not wait");
      });
    });
  });
});

Deno.test("on SIGTERM with its store locked by another program, main.ts exits 1 with a log line, not a stack trace", async () => {
  await withKvFile(async (kvPath) => {
    const main = await startMain(kvPath);
    assert.equal((await main.request("PUT", "/v1/regions/iad", ADMIN, {})).status, 201);
    await whileAnotherWrites(kvPath, async () => {
      const status = await main.stop("SIGTERM");
      assert.equal(status.code, 1, main.output());
      assert.match(main.output(), /"level":"warn","msg":"stopped before everything finished"/);
      assert.doesNotMatch(main.output(), /Uncaught|\bat \S+:\d+:\d+/, "no stack trace");
    });
  });
});

Deno.test("a claim whose body is still on its way when the server stops gets 503, not 400", async () => {
  await using main = await startMain();
  assert.equal((await main.request("PUT", "/v1/regions/iad", ADMIN, {})).status, 201);
  assert.equal((await main.request("PUT", "/v1/regions/iad/resources/r0", ADMIN, {})).status, 201);
  const { port } = new URL(main.base);
  using conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) });
  const body = JSON.stringify({ holder: "h" });
  const encoder = new TextEncoder();
  // The server asks for the body (100 Continue) once the route reads it: it is in flight.
  await conn.write(encoder.encode(
    "POST /v1/regions/iad/claims HTTP/1.1\r\nHost: allot\r\n" +
      `Authorization: Bearer ${CLIENT}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${body.length}\r\nExpect: 100-continue\r\n\r\n`,
  ));
  const answer = readAll(conn);
  await answer.upTo("100 Continue\r\n\r\n");
  const stopped = main.stop("SIGTERM");
  // Once it no longer accepts connections, the server has begun stopping.
  for (const deadline = Date.now() + 10_000;;) {
    assert.ok(Date.now() < deadline, "the server still accepts connections 10 s after SIGTERM");
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port: Number(port) })).close();
    } catch {
      break;
    }
  }
  await conn.write(encoder.encode(body)).catch(() => {}); // Deno may have dropped the body
  const text = await answer.upTo(null);
  assert.match(text, /HTTP\/1\.1 503 .*\r\n/, text);
  assert.match(text, /\r\nretry-after: 1\r\n/i, text);
  assert.match(text, /Cannot read the request body/, text);
  assert.deepEqual({ ...(await stopped) }, { success: true, code: 0, signal: null });
});

/**
 * What `conn` sends, read as it arrives: `upTo(s)` waits for `s` (null: the end), failing
 * after 10 s rather than hanging the suite.
 */
function readAll(conn: Deno.Conn) {
  let text = "";
  const reader = conn.readable.pipeThrough(new TextDecoderStream()).getReader();
  return {
    async upTo(until: string | null): Promise<string> {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer in 10 s: ${text}`)), 10_000);
      });
      try {
        while (until === null || !text.includes(until)) {
          const { done, value } = await Promise.race([reader.read(), timedOut]);
          if (done) {
            if (until === null) return text;
            throw new Error(`no ${JSON.stringify(until)} in ${JSON.stringify(text)}`);
          }
          text += value;
        }
        return text;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Sends 60 claims, then `signal` once the first is answered; each claim's answer. */
async function claimThroughShutdown(kvPath: string, signal: Deno.Signal) {
  await using main = await startMain(kvPath);
  assert.equal((await main.request("PUT", "/v1/regions/iad", ADMIN, {})).status, 201);
  for (let i = 0; i < 20; i++) {
    const res = await main.request("PUT", `/v1/regions/iad/resources/r${i}`, ADMIN, {});
    assert.equal(res.status, 201);
  }
  // Sixty open connections first, so that the claims are not still connecting at the signal.
  await Promise.all(Array.from({ length: 60 }, async () => {
    await (await main.request("GET", "/healthz")).body?.cancel();
  }));
  const claims = Array.from(
    { length: 60 },
    (_, i) =>
      main.request("POST", "/v1/regions/iad/claims", CLIENT, { holder: `h${i}` }).then(
        async (res) => {
          await res.body?.cancel();
          return res.status;
        },
        (error) => `no answer: ${error}`,
      ),
  );
  await Promise.race(claims);
  const status = await main.stop(signal);
  const answers = await Promise.all(claims);
  assert.deepEqual({ ...status }, { success: true, code: 0, signal: null }, main.output());
  const stopping = main.output().match(/"msg":"stopping","signal":"\w+","requests":(\d+)/);
  assert.ok(stopping, main.output());
  return { answers, handling: Number(stopping[1]) };
}

/**
 * Runs main.ts to its exit with `env`; resolves with its exit code and its output. One
 * that starts serving instead is stopped after 20 s, so the test fails rather than hangs.
 */
async function runMainToExit(env: Record<string, string>, net = "--allow-net") {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", net, "--allow-env", "--allow-read", "--allow-write", "main.ts"],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    signal: AbortSignal.timeout(20_000),
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code, stdout: decode(stdout), stderr: decode(stderr) };
}

Deno.test("main.ts refuses to start with a clear message and exit code 2", async (t) => {
  await t.step("an ALLOT_KV it cannot open", async () => {
    const run = await runMainToExit({ ALLOT_KV: "/nonexistent-dir/allot/kv.sqlite", PORT: "0" });
    assert.equal(run.code, 2, run.stderr);
    assert.match(run.stderr, /^ALLOT_KV: cannot open "\/nonexistent-dir\/allot\/kv.sqlite": /);
    assert.doesNotMatch(run.stderr, /\bat \S+:\d+:\d+/, "no stack trace");
  });

  await t.step(
    "an ALLOT_KV file another allot serves from; free again once that one is killed",
    async () => {
      await withKvFile(async (kvPath) => {
        const first = await startMain(kvPath);
        const region = await first.request("PUT", "/v1/regions/iad", ADMIN, {});
        assert.equal(region.status, 201, await region.text());
        const second = await runMainToExit({ ALLOT_KV: kvPath, PORT: "0" });
        assert.equal(second.code, 2, second.stderr);
        assert.equal(
          second.stderr.trim(),
          `ALLOT_KV: "${kvPath}" is in use by another process (one process owns one KV file: stop the other, or give this one another file)`,
        );
        assert.doesNotMatch(second.stdout, /allot_/, "no generated token was printed");
        assert.equal((await first.request("GET", "/readyz")).status, 200, "the owner serves on");
        await first.stop("SIGKILL");
        // The kernel dropped the lock with the process: no stale lock file to remove.
        await using restarted = await startMain(kvPath);
        const read = await restarted.request("GET", "/v1/regions/iad", ADMIN);
        assert.equal(read.status, 200, await read.text());
      });
    },
  );

  await t.step("a KV Connect URL it cannot reach, without printing its credentials", async () => {
    // As given, then spelt as Deno would not (its own errors name the URL differently), then
    // with a quote, then a `/` (base64), in the password.
    const shown = [
      ["http://kvuser:kv-secret-0001@127.0.0.1:9/", "http://***@127.0.0.1:9/"],
      ["HTTP://kvuser:kv-secret-0001@LOCALHOST:00009/a/../", "http://***@LOCALHOST:00009/a/../"],
      ["http://kvuser:kv'secret-0001@127.0.0.1:9/", "http://***@127.0.0.1:9/"],
      ["http://kvuser:kv/secret-0001==@127.0.0.1:9/", "http://***@127.0.0.1:9/"],
    ];
    for (const [kvUrl, redacted] of shown) {
      const run = await runMainToExit({
        ALLOT_KV: kvUrl,
        DENO_KV_ACCESS_TOKEN: "kv-connect-test-token-000000000000",
        PORT: "0",
      });
      assert.equal(run.code, 2, run.stderr);
      assert.ok(run.stderr.startsWith(`ALLOT_KV: cannot open "${redacted}": `), run.stderr);
      assert.doesNotMatch(run.stderr + run.stdout, /secret-0001|kvuser/, run.stderr);
    }
  });

  await t.step("an ALLOT_KV `file:` URI, before it opens or locks anything", async () => {
    const run = await runMainToExit({ ALLOT_KV: "file:kv.sqlite", PORT: "0" });
    assert.equal(run.code, 2, run.stderr);
    assert.match(run.stderr, /ALLOT_KV: a `file:` URI names different files/);
  });

  await t.step("a PORT it may not listen on", async () => {
    const run = await runMainToExit(
      { ALLOT_KV: ":memory:", PORT: "8123" },
      "--allow-net=127.0.0.1",
    );
    assert.equal(run.code, 2, run.stderr);
    assert.match(
      run.stderr,
      /^PORT: cannot listen on 8123: Requires net access to "0\.0\.0\.0:8123"/,
    );
    assert.doesNotMatch(run.stderr, /\bat \S+:\d+:\d+/, "no stack trace");
  });

  await t.step("a PORT in use, before it prints a token or takes queue work", async () => {
    using taken = Deno.listen({ hostname: "0.0.0.0", port: 0 });
    const run = await runMainToExit({ ALLOT_KV: ":memory:", PORT: String(taken.addr.port) });
    assert.equal(run.code, 2, run.stderr);
    assert.equal(run.stderr.trim(), `PORT: ${taken.addr.port} is already in use`);
    assert.doesNotMatch(run.stdout, /allot_/, "no generated token was printed");
  });
});

Deno.test("main.ts with a generated token goes on serving when no one reads its stdout", async () => {
  const free = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = free.addr.port;
  free.close();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", "--allow-read", "main.ts"],
    cwd: ROOT,
    env: { ALLOT_KV: ":memory:", ALLOT_TOKENS: "", PORT: String(port), NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  await child.stdout.cancel(); // a `| head` that has ended, a log shipper that died
  const stderr = new Response(child.stderr).text();
  let exited = false;
  child.status.then(() => exited = true);
  try {
    let answered = 0;
    for (const deadline = Date.now() + 20_000; !exited && !answered && Date.now() < deadline;) {
      answered = await fetch(`http://127.0.0.1:${port}/v1/regions`)
        .then(async (res) => (await res.body?.cancel(), res.status), () => 0);
      if (answered === 0) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal(
      answered,
      401,
      `it serves, with its generated token: ${exited ? await stderr : ""}`,
    );
  } finally {
    if (!exited) child.kill("SIGTERM");
    await child.status;
  }
});
