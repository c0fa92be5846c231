import assert from "node:assert/strict";
import { newId } from "../lib/ids.ts";

Deno.test("newId() ids increase in creation order, also many within one millisecond", () => {
  const ids = Array.from({ length: 1000 }, () => newId());
  const sorted = [...ids].sort();
  assert.deepEqual(ids, sorted);
  assert.equal(new Set(ids).size, ids.length);
  for (const id of ids) assert.match(id, /^[0-9A-HJKMNP-TV-Z]{26}$/);
});
