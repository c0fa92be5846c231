import assert from "node:assert/strict";
import { TokenRegistry } from "../lib/auth.ts";
import { ConfigError, loadConfig } from "../lib/config.ts";

const tokens = (value: unknown) => ({ ALLOT_TOKENS: JSON.stringify(value) });

/** Asserts loadConfig refuses `env` with a ConfigError whose message names `variable`. */
function assertRefused(env: Record<string, string | undefined>, variable: string): void {
  assert.throws(
    () => loadConfig(env),
    (error: unknown) => {
      assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${error}`);
      assert.ok(error.message.includes(variable), `"${error.message}" should name ${variable}`);
      return true;
    },
  );
}

Deno.test("loadConfig() parses valid settings", async (t) => {
  await t.step("tokens of every role, with and without region scopes", () => {
    const specs = [
      { token: "a".repeat(16), role: "admin" },
      { token: "b".repeat(40), role: "agent", regions: ["iad", "fra"] },
      { token: "c".repeat(512), role: "client", regions: ["fra"] },
    ];
    const config = loadConfig({ ...tokens(specs), PORT: "8080", ALLOT_KV: ":memory:" });
    assert.deepEqual(config.tokens, specs);
    assert.equal(config.port, 8080);
    assert.equal(config.kvPath, ":memory:");
  });

  await t.step("defaults: PORT 8000, no KV path, no tokens", () => {
    const config = loadConfig({});
    assert.equal(config.port, 8000);
    assert.equal(config.kvPath, undefined);
    assert.deepEqual(config.tokens, []);
    assert.deepEqual(loadConfig({ ALLOT_TOKENS: "" }).tokens, []);
    assert.deepEqual(loadConfig({ ALLOT_TOKENS: "[]" }).tokens, []);
  });

  await t.step("an empty PORT is unset, not port 0", () => {
    assert.equal(loadConfig({ PORT: "" }).port, 8000);
    assert.equal(loadConfig({ PORT: "  " }).port, 8000);
  });

  await t.step("PORT 0 asks for any free port", () => {
    assert.equal(loadConfig({ PORT: "0" }).port, 0);
  });

  await t.step("a KV Connect URL's scheme in capitals is still a URL, not a file name", () => {
    const config = loadConfig({ ALLOT_KV: "HTTPS://Kv.Example.com/DB" });
    assert.equal(config.kvPath, "https://Kv.Example.com/DB");
  });
});

Deno.test("loadConfig() refuses bad settings with a message naming the variable", async (t) => {
  const good = { token: "t".repeat(16), role: "admin" };
  await t.step("ALLOT_TOKENS that is not JSON", () => {
    assertRefused({ ALLOT_TOKENS: "[{token: nope}]" }, "ALLOT_TOKENS");
  });
  await t.step("ALLOT_TOKENS that is not an array", () => {
    assertRefused(tokens(good), "ALLOT_TOKENS");
  });
  await t.step("an unknown role", () => {
    assertRefused(tokens([{ token: "t".repeat(16), role: "root" }]), "ALLOT_TOKENS");
  });
  await t.step("a missing role", () => {
    assertRefused(tokens([{ token: "t".repeat(16) }]), "ALLOT_TOKENS");
  });
  await t.step("a token shorter than 16 characters", () => {
    assertRefused(tokens([{ token: "t".repeat(15), role: "admin" }]), "ALLOT_TOKENS");
  });
  await t.step("a token with a space, or a character past ASCII", () => {
    assertRefused(
      tokens([{ token: "correct horse battery staple", role: "admin" }]),
      "ALLOT_TOKENS",
    );
    assertRefused(tokens([{ token: "tokentokentoken\u00e9", role: "admin" }]), "ALLOT_TOKENS");
  });
  await t.step("no ALLOT_TOKENS on Deno Deploy", () => {
    assertRefused({ DENO_DEPLOYMENT_ID: "abc123" }, "ALLOT_TOKENS");
    assert.equal(loadConfig({ DENO_DEPLOYMENT_ID: "abc123", ...tokens([good]) }).tokens.length, 1);
  });
  await t.step("a duplicate token", () => {
    assertRefused(tokens([good, { ...good, role: "client" }]), "ALLOT_TOKENS");
  });
  await t.step("a bad region scope", () => {
    assertRefused(tokens([{ ...good, regions: ["Not A Region"] }]), "ALLOT_TOKENS");
    assertRefused(tokens([{ ...good, regions: [] }]), "ALLOT_TOKENS");
  });
  await t.step("an unknown token field", () => {
    assertRefused(tokens([{ ...good, scope: "all" }]), "ALLOT_TOKENS");
  });
  await t.step("a PORT that is not a port", () => {
    assertRefused({ PORT: "eighty" }, "PORT");
    assertRefused({ PORT: "70000" }, "PORT");
    assertRefused({ PORT: "80.5" }, "PORT");
    // Number() reads these as ports; a typo should not start a server somewhere unexpected.
    for (const odd of ["0x1F40", "1e3", "8000 ", "+8000", "-0", "080000"]) {
      assertRefused({ PORT: odd }, "PORT");
    }
  });
  await t.step("an ALLOT_KV `file:` URI, whose file depends on Deno's permissions", () => {
    assertRefused({ ALLOT_KV: "file:kv.sqlite" }, "ALLOT_KV");
    assertRefused({ ALLOT_KV: "file:/var/lib/allot/kv.sqlite" }, "ALLOT_KV");
  });
  await t.step("an OTEL_DENO Deno would ignore", () => {
    for (const odd of ["yes", "1", "on", " true", "false "]) {
      assertRefused({ OTEL_DENO: odd }, "OTEL_DENO");
    }
    // What Deno itself accepts, and empty (unset), as for PORT and ALLOT_TOKENS.
    for (const fine of ["true", "false", "TRUE", "False", "", undefined]) {
      loadConfig({ OTEL_DENO: fine });
    }
  });
});

Deno.test("TokenRegistry authenticates exactly the configured tokens", async () => {
  const config = loadConfig(tokens([
    { token: "admin-token-0000001", role: "admin" },
    { token: "agent-token-0000001", role: "agent", regions: ["fra"] },
  ]));
  const registry = await TokenRegistry.from(config.tokens);
  const admin = await registry.authenticate("Bearer admin-token-0000001");
  assert.equal(admin.role, "admin");
  assert.equal(admin.regions, null);
  const agent = await registry.authenticate("bearer agent-token-0000001");
  assert.equal(agent.role, "agent");
  assert.deepEqual([...agent.regions!], ["fra"]);
  assert.notEqual(admin.id, agent.id);
  for (
    const header of [
      undefined,
      "",
      "Bearer",
      "Bearer admin-token-000000",
      "Bearer admin-token-0000001x",
      "Token admin-token-0000001",
      "Bearer admin-token-0000001 extra",
    ]
  ) {
    await assert.rejects(async () => await registry.authenticate(header), (e: Error) => {
      assert.equal((e as { status?: number }).status, 401, String(header));
      return true;
    });
  }
});
