import assert from "node:assert/strict";
import { claim, makeApp, seedRegion, TOKENS } from "./_helpers.ts";

Deno.test("a claim is granted, renewed and released through the HTTP API", async () => {
  await using t = await makeApp();
  await seedRegion(t, "iad", 2);
  const granted = await claim(t, "iad", { holder: "worker-1" });
  assert.equal(granted.status, 201, JSON.stringify(granted.body));
  const { id, secret } = granted.body;
  const renewed = await t.request("POST", `/v1/claims/${id}/renew`, {
    token: TOKENS.client,
    body: { leaseMs: 5000 },
    headers: { "allot-claim-secret": secret },
  });
  assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
  const released = await t.request("DELETE", `/v1/claims/${id}`, {
    token: TOKENS.client,
    headers: { "allot-claim-secret": secret },
  });
  assert.equal(released.status, 204);
  const read = await t.request("GET", `/v1/claims/${id}`, { token: TOKENS.client });
  assert.equal(read.body.state, "released");
});
