import assert from "node:assert/strict";
import type { z } from "zod";
import { SCALAR_CDN } from "../routes/docs.ts";
import { makeApp } from "./_helpers.ts";

/** Pages for people, not API operations: served by the app, deliberately not in the document. */
const PAGES = ["GET /", "GET /dashboard.js", "GET /docs", "GET /openapi.json"];

// deno-lint-ignore no-explicit-any
type Json = any;

async function documentOf(t: Awaited<ReturnType<typeof makeApp>>): Promise<Json> {
  const res = await t.app.request("/openapi.json");
  assert.equal(res.status, 200);
  return await res.json();
}

/** Every documented operation as [`METHOD /path`, operation]. */
function operations(doc: Json): [string, Json][] {
  return Object.entries(doc.paths as Record<string, Record<string, Json>>).flatMap((
    [path, item],
  ) =>
    Object.entries(item).map((
      [method, op],
    ): [string, Json] => [`${method.toUpperCase()} ${path}`, op])
  );
}

Deno.test("every route the app serves is in the OpenAPI document, and every documented one is served", async () => {
  await using t = await makeApp();
  const served = new Set(
    t.app.routes
      .filter((r) => r.method !== "ALL") // middleware
      .map((r) => `${r.method} ${r.path.replace(/:(\w+)/g, "{$1}")}`),
  );
  for (const page of PAGES) assert.ok(served.delete(page), `${page} is served`);
  const documented = operations(await documentOf(t)).map(([key]) => key);
  assert.deepEqual([...served].sort(), documented.sort());
});

Deno.test("every API operation has an id, names its roles and answers problems as problem+json", async () => {
  await using t = await makeApp();
  const ids = new Set<string>();
  for (const [key, op] of operations(await documentOf(t))) {
    assert.equal(typeof op.operationId, "string", `${key} has an operationId`);
    assert.ok(!ids.has(op.operationId), `${key}: operationId ${op.operationId} is unique`);
    ids.add(op.operationId);
    assert.ok(op.summary, `${key} has a summary`);
    for (const [status, response] of Object.entries(op.responses as Record<string, Json>)) {
      const example = Object.values(response.content ?? {})[0] as Json;
      if (status !== "204") assert.ok(example?.example, `${key} ${status} has an example`);
      if (Number(status) >= 400 && key.includes("/v1/")) {
        assert.deepEqual(Object.keys(response.content), ["application/problem+json"], key);
      }
    }
    if (!key.includes(" /v1/")) continue;
    assert.match(op.description, /^\*\*Roles?:\*\* (admin|agent|client)/, `${key} names its roles`);
    assert.deepEqual(op.security, [{ bearer: [] }], `${key} needs a bearer token`);
    assert.ok(op.responses["401"], `${key} documents 401`);
  }
  assert.equal(ids.size, 21);
});

Deno.test("the allot headers are documented on the operations that use them", async () => {
  await using t = await makeApp();
  const doc = await documentOf(t);
  const op = (id: string) => operations(doc).find(([, o]) => o.operationId === id)![1];
  const requestHeader = (id: string, name: string) =>
    op(id).parameters?.find((p: Json) => p.in === "header" && p.name === name.toLowerCase());
  const responseHeader = (id: string, status: number, name: string) =>
    op(id).responses[status].headers?.[name];

  assert.ok(requestHeader("createClaim", "Idempotency-Key")?.description);
  for (const id of ["renewClaim", "releaseClaim"]) {
    assert.ok(requestHeader(id, "Allot-Claim-Secret")?.description, id);
    assert.equal(
      requestHeader(id, "Allot-Claim-Secret").required,
      true,
      `${id}: no 2xx without it`,
    );
  }
  for (const id of ["getClaim", "listClaims", "listResources", "getResource"]) {
    assert.ok(requestHeader(id, "Allot-Consistency-Token")?.description, id);
    assert.ok(responseHeader(id, 200, "Allot-Consistency"), id);
  }
  const writes = [
    ["createClaim", 201],
    ["renewClaim", 200],
    ["releaseClaim", 204],
    ["revokeClaim", 200],
    ["reportStatus", 202],
    ["putRegion", 200],
    ["putRegion", 201],
    ["putResource", 200],
    ["putResource", 201],
    ["deleteResource", 200],
  ] as const;
  for (const [id, status] of writes) {
    assert.ok(responseHeader(id, status, "Allot-Consistency-Token"), `${id} ${status}`);
  }
  assert.ok(responseHeader("createClaim", 201, "Allot-Served-By"));
  assert.ok(responseHeader("createClaim", 201, "Idempotent-Replayed"));
  for (const [key, o] of operations(doc)) {
    if (o.responses[503] && key.includes("/v1/")) {
      assert.ok(o.responses[503].headers?.["Retry-After"], `${key} 503 has Retry-After`);
    }
  }
  assert.ok(op("renewClaim").responses[409] && op("releaseClaim").responses[409]);
  assert.ok(op("createClaim").responses[503] && op("reportStatus").responses[503]);
});

Deno.test("the document states the label rules the code enforces (key pattern, at most 16)", async () => {
  await using t = await makeApp();
  const doc = await documentOf(t);
  for (const schema of ["ClaimInput", "ResourceInput", "StatusUpdate"]) {
    const labels = doc.components.schemas[schema].properties.labels;
    assert.equal(labels.maxProperties, 16, schema);
    const keys = new RegExp(labels.propertyNames.pattern);
    assert.ok(keys.test("browser") && keys.test("gpu.vendor/model"), schema);
    assert.ok(!keys.test("a b") && !keys.test("") && !keys.test("-x"), schema);
  }
  const tooMany = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"]));
  for (const labels of [tooMany, { "a b": "x" }]) {
    const res = await t.request("PUT", "/v1/regions/iad/resources/r", { body: { labels } });
    assert.equal(res.status, 422, "what the document refuses, the code refuses");
  }
});

Deno.test("every example in the document is valid for the zod schema it illustrates", async () => {
  await using t = await makeApp();
  let checked = 0;
  for (const def of t.app.openAPIRegistry.definitions) {
    if (def.type !== "route") continue;
    const { route } = def;
    const bodies = [
      ["request", route.request?.body?.content],
      ...Object.entries(route.responses).map((
        [status, r],
      ) => [status, "content" in r && r.content]),
    ] as const;
    for (const [where, content] of bodies) {
      for (const media of Object.values(content || {})) {
        if (!media || !("schema" in media) || !("example" in media)) continue;
        const schema = media.schema as z.ZodType;
        const parsed = schema.safeParse(media.example);
        const label = `${route.method} ${route.path} ${where}`;
        assert.ok(parsed.success, `${label}: ${JSON.stringify(parsed.error?.issues)}`);
        // An answer's example has no field the schema lacks (parsing would strip it).
        if (where !== "request") assert.deepEqual(parsed.data, media.example, label);
        checked++;
      }
    }
  }
  assert.ok(checked > 40, `checked ${checked} examples`);
});

Deno.test("/docs serves an interactive reference over /openapi.json", async () => {
  await using t = await makeApp();
  const res = await t.app.request("/docs");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
  const html = await res.text();
  assert.ok(html.includes('"/openapi.json"'), "the page reads the generated document");
  assert.ok(html.includes(SCALAR_CDN), "the page loads the pinned Scalar build");
});
