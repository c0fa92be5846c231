import assert from "node:assert/strict";
import { ADMIN, startMain } from "./_main.ts";

/** Polls `check` until it is true or `ms` pass. */
async function eventually(check: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return check();
}

/**
 * An OTLP/HTTP collector on a free port recording `path body` of each export, and the
 * environment that points main.ts's telemetry at it.
 */
function startCollector() {
  const received: string[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    received.push(`${new URL(req.url).pathname} ${await req.text()}`);
    return Response.json({});
  });
  return {
    received,
    env: {
      OTEL_DENO: "true",
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${server.addr.port}`,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    },
    shutdown: () => server.shutdown(),
  };
}

Deno.test("with OTEL_DENO=true a claim exports an allot.claim span and allot metrics over OTLP", async () => {
  const collector = startCollector();
  const { received } = collector;
  try {
    // Stopped before the collector, so that its last export finds one.
    await using main = await startMain(undefined, {
      ...collector.env,
      OTEL_METRIC_EXPORT_INTERVAL: "500",
      OTEL_BSP_SCHEDULE_DELAY: "100",
    });
    const headers = { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" };
    for (
      const [method, path, body] of [
        ["PUT", "/v1/regions/otel", "{}"],
        ["PUT", "/v1/regions/otel/resources/r1", "{}"],
        ["POST", "/v1/regions/otel/claims", '{"holder":"h"}'],
      ]
    ) {
      const res = await fetch(main.base + path, { method, headers, body });
      await res.body?.cancel();
      assert.ok(res.status < 300, `${method} ${path}: ${res.status}`);
    }
    const has = (path: string, name: string) =>
      received.some((r) => r.startsWith(path) && r.includes(`"${name}"`));
    assert.ok(await eventually(() => has("/v1/traces", "allot.claim"), 15_000), "claim span");
    assert.ok(await eventually(() => has("/v1/metrics", "allot.claims"), 15_000), "claim counter");
    assert.ok(
      await eventually(() => has("/v1/metrics", "allot.region.lag_ms"), 15_000),
      "lag gauge",
    );
    // Units travel with the metrics (milliseconds for the lag, counts by what they count).
    const metricsExport = received.find((r) =>
      r.startsWith("/v1/metrics") && r.includes('"allot.region.lag_ms"')
    )!;
    assert.match(
      metricsExport,
      /"name":\s*"allot\.region\.lag_ms",\s*"description":\s*"[^"]*",\s*"unit":\s*"ms"/,
    );
    assert.match(
      metricsExport,
      /"name":\s*"allot\.claims",\s*"description":\s*"[^"]*",\s*"unit":\s*"\{claim\}"/,
    );

    // A deleted region's gauges stop: later exports carry the other metrics, not them.
    for (const path of ["/v1/regions/otel/resources/r1", "/v1/regions/otel"]) {
      const res = await fetch(main.base + path, { method: "DELETE", headers });
      await res.body?.cancel();
      assert.equal(res.status, 200, `DELETE ${path}`);
    }
    const deletedAt = received.length;
    const exports = () => received.slice(deletedAt).filter((r) => r.startsWith("/v1/metrics"));
    assert.ok(await eventually(() => exports().length >= 3, 15_000), "exports go on");
    // The first may have been collected before the deletion.
    for (const later of exports().slice(1)) {
      assert.ok(later.includes('"allot.claims"'), "the claim counter is still exported");
      assert.ok(!later.includes('"allot.region.lag_ms"'), "the deleted region's lag gauge is not");
    }
  } finally {
    await collector.shutdown();
  }
});

Deno.test("with OTEL_DENO=true, a generated admin token is printed to the terminal only", async () => {
  const collector = startCollector();
  const { received } = collector;
  try {
    await using main = await startMain(undefined, {
      ALLOT_TOKENS: "",
      ...collector.env,
      OTEL_BLRP_SCHEDULE_DELAY: "100",
    });
    const token = () => main.output().match(/\n {2}(allot_\S+)\n/)?.[1];
    assert.ok(await eventually(() => token() !== undefined, 10_000), main.output());
    // The "listening" line, logged before the token was printed, has been exported.
    const exported = () => received.filter((r) => r.startsWith("/v1/logs"));
    assert.ok(await eventually(() => exported().some((r) => r.includes("listening")), 15_000));
    const res = await fetch(`${main.base}/v1/regions`, {
      headers: { authorization: `Bearer ${token()}` },
    });
    assert.equal(res.status, 200, await res.text());
    assert.ok(!received.some((r) => r.includes(token()!)), "the token reached the collector");
  } finally {
    await collector.shutdown();
  }
});
