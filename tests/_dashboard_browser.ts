/**
 * The dashboard's browser scenario, run by tests/dashboard_test.ts as its own process
 * (`deno run -A tests/_dashboard_browser.ts <chromium> <screenshot dir>`): playwright-core reads
 * /proc/sys while it loads, which Deno allows only with --allow-all, and the test
 * task does not grant that. It serves the app over a :memory: KV with a fake clock,
 * drives headless chromium through the page, injects queue lag, and writes
 * fallback.png and recovered.png. Any failed expectation exits non-zero.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { chromium, type Page } from "playwright-core";
import { createApp } from "../app.ts";
import { StatusApplier } from "../lib/applier.ts";
import { TokenRegistry } from "../lib/auth.ts";
import { ingestStatus } from "../lib/status.ts";
import { FakeClock, TOKEN_SPECS, TOKENS } from "./_helpers.ts";

const LAG = { enterMs: 2000, exitMs: 500 };
const WAIT = { timeout: 10_000 };

/** Seeds three regions through the API: iad backed up by fra, and sin on its own. */
async function seed(app: ReturnType<typeof createApp>): Promise<void> {
  const call = async (
    method: string,
    path: string,
    body: unknown,
    token: string = TOKENS.admin,
  ) => {
    const res = await app.request(path, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    assert.ok(res.status < 300, `${method} ${path}: ${res.status} ${await res.text()}`);
  };
  await call("PUT", "/v1/regions/fra", { lag: LAG });
  await call("PUT", "/v1/regions/iad", { backup: "fra", lag: LAG });
  await call("PUT", "/v1/regions/sin", { lag: { enterMs: 1000, exitMs: 250 } });
  for (const [region, count, claimed] of [["iad", 8, 5], ["fra", 6, 1], ["sin", 4, 4]] as const) {
    for (let i = 0; i < count; i++) {
      await call("PUT", `/v1/regions/${region}/resources/${region}-${i}`, {
        labels: { browser: "chromium" },
      });
    }
    // fra's one live claim comes after 60 ended ones: the card must still list it.
    for (let i = 0; region === "fra" && i < 60; i++) {
      const res = await app.request(`/v1/regions/${region}/claims`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKENS.client}`, "content-type": "application/json" },
        body: JSON.stringify({ holder: "short-job" }),
      });
      const { id, secret } = await res.json();
      const released = await app.request(`/v1/claims/${id}`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${TOKENS.client}`, "allot-claim-secret": secret },
      });
      assert.equal(released.status, 204);
    }
    for (let i = 0; i < claimed; i++) {
      await call(
        "POST",
        `/v1/regions/${region}/claims`,
        { holder: `worker-${region}-${i}` },
        TOKENS.client,
      );
    }
  }
}

const card = (region: string) => `section[data-region="${region}"]`;

/** Advances the fake clock and waits until the page has drawn the new lag. */
async function lagTo(page: Page, clock: FakeClock, since: number, lagMs: number): Promise<void> {
  clock.time = since + lagMs;
  await page.waitForSelector(`${card("iad")}[data-lag="${lagMs}"]`, WAIT);
}

async function main(executablePath: string, outDir: string): Promise<void> {
  const kv = await Deno.openKv(":memory:");
  const clock = new FakeClock();
  const app = createApp({ kv, clock, tokens: TokenRegistry.from(TOKEN_SPECS) });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  await seed(app);
  const profile = await Deno.makeTempDir({ prefix: "allot-chromium-" });
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1280, height: 1000 },
  });
  try {
    const page = await browser.newPage();
    const failures: string[] = [];
    page.on("pageerror", (error) => failures.push(String(error)));
    page.on("console", (m) => m.type() === "error" && failures.push(m.text()));
    await page.goto(`http://127.0.0.1:${server.addr.port}/?refresh=250`);

    // Without a token: only the prompt.
    await page.waitForSelector("#login", { state: "visible" });
    assert.equal(await page.isHidden("#board"), true);
    await page.fill("#token", "not-a-real-token");
    await page.click("button[type=submit]");
    await page.waitForSelector("#login-error:has-text('refused (401)')", WAIT);
    assert.equal(await page.locator("section[data-region]").count(), 0, "no data for a bad token");
    failures.length = 0; // the browser logs the refused request itself

    await page.fill("#token", TOKENS.admin);
    await page.click("button[type=submit]");
    await page.waitForSelector(`${card("iad")}[data-mode="primary"]`, WAIT);
    assert.equal(await page.locator("section[data-region]").count(), 3);
    assert.match(await page.textContent(card("iad")) ?? "", /5 of 8 slots claimed \(63%\)/);
    const fra = await page.textContent(card("fra")) ?? "";
    assert.match(fra, /worker-fra-0/, "the live claim behind 60 ended ones is listed");
    assert.doesNotMatch(fra, /short-job|None\./);

    // Queue lag: one status batch enqueued and left unapplied, time moving on.
    const since = clock.now();
    const pending = await ingestStatus(kv, clock, "iad", [
      { resource: "iad-0", seq: 1, state: "ready", load: 0.5 },
    ]);
    for (const lagMs of [400, 800, 1200, 1600, 2000]) await lagTo(page, clock, since, lagMs);
    assert.equal(
      await page.getAttribute(card("iad"), "data-mode"),
      "primary",
      "at enterMs: not yet",
    );
    await lagTo(page, clock, since, 2400);
    await page.waitForSelector(`${card("iad")}[data-mode="fallback"]`, WAIT);
    const fallback = await page.textContent(card("iad")) ?? "";
    assert.match(fallback, /primary → fallback/);
    assert.match(fallback, /claims served by "fra"/);
    for (const lagMs of [2800, 3200]) await lagTo(page, clock, since, lagMs);
    await page.screenshot({ path: join(outDir, "fallback.png"), fullPage: true });

    // The consumer catches up: lag falls under exitMs and the region is primary again.
    await new StatusApplier(kv, clock).apply(pending.messages);
    await page.waitForSelector(`${card("iad")}[data-mode="primary"][data-lag="0"]`, WAIT);
    assert.match(await page.textContent(card("iad")) ?? "", /fallback → primary/);
    await page.screenshot({ path: join(outDir, "recovered.png"), fullPage: true });

    // The token lives in this tab: a reload keeps it, signing out forgets it and the data.
    await page.reload();
    await page.waitForSelector(card("iad"), WAIT);
    await page.click("#signout");
    assert.equal(await page.locator("section[data-region]").count(), 0);
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
    assert.deepEqual(failures, [], "no script errors");
  } finally {
    await browser.close();
    await server.shutdown();
    kv.close();
    await Deno.remove(profile, { recursive: true });
  }
}

if (import.meta.main) {
  const [chromiumPath, outDir] = Deno.args;
  assert.ok(chromiumPath && outDir, "usage: _dashboard_browser.ts <chromium> <screenshot dir>");
  await main(chromiumPath, outDir);
}
