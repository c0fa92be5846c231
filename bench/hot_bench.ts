/**
 * Micro-benchmarks of the pure functions on allot's claim path:
 *   deno bench bench/hot_bench.ts
 */
import { digestsEqual, sha256Hex } from "../lib/auth.ts";
import { freeIndexHash } from "../lib/keys.ts";
import { labelsMatch } from "../lib/pool.ts";

const labels = { browser: "chromium", version: "131", gpu: "none", zone: "a" };
const secret = "q8Z2m0c1xU4yA7rJ3kT9pW6vN5bH2dF8gL1sE0oI4uY";
const digest = await sha256Hex(secret);

Deno.bench("keys.freeIndexHash", { group: "keys" }, () => {
  freeIndexHash("chrome-000123", 3);
});

Deno.bench("pool.labelsMatch: no filter", { group: "labels" }, () => {
  labelsMatch(labels, undefined);
});

Deno.bench("pool.labelsMatch: two wanted labels", { group: "labels" }, () => {
  labelsMatch(labels, { browser: "chromium", zone: "a" });
});

Deno.bench("auth.sha256Hex: claim secret", { group: "auth" }, async () => {
  await sha256Hex(secret);
});

Deno.bench("auth.digestsEqual: 64 hex chars", { group: "auth" }, () => {
  digestsEqual(digest, digest);
});
