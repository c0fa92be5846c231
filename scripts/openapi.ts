/**
 * Prints the OpenAPI document exactly as the app serves it at /openapi.json, so CI
 * can lint it: `deno task openapi > openapi.json`. No server, token or KV file needed.
 */
import { createApp } from "../app.ts";
import { TokenRegistry } from "../lib/auth.ts";

const kv = await Deno.openKv(":memory:");
try {
  const res = await createApp({ kv, tokens: TokenRegistry.from([]) }).request("/openapi.json");
  if (!res.ok) throw new Error(`GET /openapi.json answered ${res.status}`);
  console.log(JSON.stringify(await res.json(), null, 2));
} finally {
  kv.close();
}
