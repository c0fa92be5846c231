// First: the fake tracer must be in place before lib/telemetry.ts takes its tracer.
import { spans } from "./_fake_tracer.ts";
import assert from "node:assert/strict";
import { SpanStatusCode } from "@opentelemetry/api";
import { UnavailableError } from "../lib/errors.ts";
import { inSpan } from "../lib/telemetry.ts";
import { makeApp, seedRegion, TOKENS } from "./_helpers.ts";

Deno.test("an allot.claim span", async (t) => {
  await using app = await makeApp();
  await seedRegion(app, "iad", 1);
  const claim = () =>
    app.request("POST", "/v1/regions/iad/claims", {
      token: TOKENS.client,
      body: { holder: "h" },
    });
  const lastClaimSpan = () => spans.findLast((s) => s.name === "allot.claim")!;

  await t.step("of a grant names the serving region and has no error status", async () => {
    assert.equal((await claim()).status, 201);
    const span = lastClaimSpan();
    assert.equal(span.attributes["allot.served_by"], "iad");
    assert.equal(span.status, undefined);
  });

  await t.step("of a no-capacity refusal names the problem and is not an error", async () => {
    assert.equal((await claim()).status, 503);
    const span = lastClaimSpan();
    assert.equal(span.attributes["allot.problem"], "no-capacity");
    assert.equal(span.status, undefined, "an expected refusal is not a failed operation");
    assert.deepEqual(span.exceptions, []);
  });
});

Deno.test("inSpan() marks a span as an error for a failure of allot, and rethrows it", async () => {
  for (
    const failure of [
      new TypeError("kv exploded"),
      new UnavailableError("Cannot tell whether the claim committed: the store did not answer"),
    ]
  ) {
    await assert.rejects(inSpan("allot.test", {}, () => Promise.reject(failure)), failure);
    const span = spans.findLast((s) => s.name === "allot.test")!;
    assert.equal(span.status?.code, SpanStatusCode.ERROR, failure.message);
    assert.deepEqual(span.exceptions, [failure]);
    assert.equal(span.attributes["allot.problem"], undefined);
  }
});
