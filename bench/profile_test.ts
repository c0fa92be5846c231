/** `deno task profile`'s summaries: self time by module and function, and CPU by thread. */
import assert from "node:assert/strict";
import { parseThreadStats } from "./cpu.ts";
import {
  type CpuProfile,
  moduleOf,
  shareTable,
  sourceOf,
  summarizeProfile,
  threadShares,
  type ThreadTimes,
} from "./profile_report.ts";

const NPM = "file:///root/.cache/deno/npm/registry.npmjs.org";

const frame = (functionName: string, url = "", lineNumber = 0) => ({
  functionName,
  url,
  lineNumber,
});

Deno.test("moduleOf() and sourceOf() name npm packages, Deno extensions, allot's files and ops", () => {
  const cases: [string, string, string, string][] = [
    ["dispatch", `${NPM}/hono/4.13.19/dist/compose.js`, "npm:hono", "npm:hono/dist/compose.js"],
    [
      "(anonymous)",
      `${NPM}/@hono/zod-validator/0.9.1/dist/index.mjs`,
      "npm:@hono/zod-validator",
      "npm:@hono/zod-validator/dist/index.mjs",
    ],
    ["serialize", "ext:core/01_core.js", "ext:core", "ext:core/01_core.js"],
    ["#commitGroup", "file:///work/main/lib/group.ts", "allot:lib/group.ts", "allot:lib/group.ts"],
    ["createApp", "file:///srv/allot/app.ts", "allot:app.ts", "allot:app.ts"],
  ];
  for (const [name, url, module, source] of cases) {
    assert.equal(moduleOf(frame(name, url)), module, url);
    assert.equal(sourceOf(url), source, url);
  }
  assert.equal(moduleOf(frame("op_kv_atomic_write")), "op op_kv_atomic_write");
  assert.equal(moduleOf(frame("(garbage collector)")), "(garbage collector)");
});

Deno.test("summarizeProfile() shares out the busy samples only, largest first", () => {
  const profile: CpuProfile = {
    nodes: [
      { id: 1, callFrame: frame("(root)") },
      { id: 2, callFrame: frame("(idle)") },
      { id: 3, callFrame: frame("dispatch", `${NPM}/hono/4.13.19/dist/compose.js`, 23) },
      { id: 4, callFrame: frame("json", `${NPM}/hono/4.13.19/dist/context.js`, 335) },
      { id: 5, callFrame: frame("op_kv_atomic_write") },
      { id: 6, callFrame: frame("", "file:///work/main/lib/group.ts", 9) },
    ],
    samples: [2, 2, 2, 2, 3, 3, 4, 5, 5, 6],
  };
  const summary = summarizeProfile(profile);
  assert.equal(summary.samples, 10);
  assert.equal(summary.busy, 0.6);
  assert.deepEqual(summary.modules, [
    { name: "npm:hono", share: 0.5 },
    { name: "op op_kv_atomic_write", share: 2 / 6 },
    { name: "allot:lib/group.ts", share: 1 / 6 },
  ]);
  assert.deepEqual(summary.functions.map((f) => f.name), [
    "dispatch npm:hono/dist/compose.js:24",
    "op op_kv_atomic_write",
    "(anonymous) allot:lib/group.ts:10",
    "json npm:hono/dist/context.js:336",
  ]);
  assert.deepEqual(summarizeProfile(profile, 1).modules, [{ name: "npm:hono", share: 0.5 }]);
  assert.deepEqual(summarizeProfile({ nodes: [], samples: [] }), {
    samples: 0,
    busy: 0,
    modules: [],
    functions: [],
  });
});

Deno.test("threadShares() sums threads of one name, counts new threads from zero, skips idle ones", () => {
  const before: ThreadTimes = new Map([
    ["100", { name: "deno", seconds: 10 }],
    ["101", { name: "V8 DefaultWorke", seconds: 1 }],
    ["102", { name: "V8 DefaultWorke", seconds: 1 }],
    ["103", { name: "tokio", seconds: 2 }],
    ["104", { name: "gone", seconds: 5 }],
  ]);
  const after: ThreadTimes = new Map([
    ["100", { name: "deno", seconds: 17.5 }],
    ["101", { name: "V8 DefaultWorke", seconds: 1.5 }],
    ["102", { name: "V8 DefaultWorke", seconds: 2 }],
    ["103", { name: "tokio", seconds: 2 }],
    ["105", { name: "sw-0", seconds: 3 }],
  ]);
  assert.deepEqual(threadShares(before, after, 10), [
    { name: "deno", share: 0.75 },
    { name: "sw-0", share: 0.3 },
    { name: "V8 DefaultWorke", share: 0.15 },
  ]);
});

Deno.test("shareTable() renders percentages and escapes pipes in names", () => {
  assert.equal(
    shareTable("thread", [{ name: "a|b", share: 0.123 }], "of one core"),
    "| thread | of one core |\n| --- | ---: |\n| a\\|b | 12.3 % |",
  );
});

Deno.test("parseThreadStats() reads names with spaces and parentheses, and user + system time", () => {
  const rest = (utime: number, stime: number) =>
    `S 1 1 1 0 -1 4194560 0 0 0 0 ${utime} ${stime} 0 0 20 0 9 0 100 0 0`;
  const text = [
    `4242 (deno) ${rest(700, 50)}`,
    `4250 (V8 DefaultWorke) ${rest(30, 10)}`,
    `4251 (odd (name)) ${rest(1, 1)}`,
    "",
  ].join("\n");
  assert.deepEqual(
    parseThreadStats(text, 100),
    new Map([
      ["4242", { name: "deno", seconds: 7.5 }],
      ["4250", { name: "V8 DefaultWorke", seconds: 0.4 }],
      ["4251", { name: "odd (name)", seconds: 0.02 }],
    ]),
  );
});
