import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { makeApp, seedRegion } from "./_helpers.ts";

/** Where Debian's chromium package installs the browser (.ci/run installs it). */
const CHROMIUM = "/usr/bin/chromium";
const chromiumInstalled = await Deno.stat(CHROMIUM).then(() => true, () => false);
if (!chromiumInstalled) {
  console.warn(`Skipping the browser test: ${CHROMIUM} is missing (apt-get install chromium).`);
}

Deno.test("the dashboard page is a shell: no region data without a token, and a strict CSP", async () => {
  await using t = await makeApp();
  await seedRegion(t, "secret-region", 2);
  const res = await t.app.request("/");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
  const html = await res.text();
  assert.ok(html.startsWith("<!doctype html>"));
  assert.ok(html.includes('<input id="token" type="password"'), "it asks for a token");
  assert.ok(!html.includes("secret-region"), "it shows nothing of the API by itself");

  const csp = res.headers.get("content-security-policy") ?? "";
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/, "no inline script may run");
  const css = html.match(/<style>([\s\S]*?)<\/style>/)![1];
  const hash = createHash("sha256").update(css).digest("base64");
  assert.ok(csp.includes(`'sha256-${hash}'`), "the CSP admits exactly the page's stylesheet");
  assert.equal(res.headers.get("cache-control"), "no-store");
});

Deno.test("the dashboard script is served as JavaScript and reads the API with the token", async () => {
  await using t = await makeApp();
  const res = await t.app.request("/dashboard.js");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/javascript/);
  const js = await res.text();
  assert.ok(js.includes("api(`/v1/regions?limit=100${query}`)"), "follows the listing's cursor");
  assert.ok(js.includes("sessionStorage"));
  assert.ok(!js.includes("innerHTML"), "API data is only ever set as text");
});

Deno.test({
  name: "in headless chromium, the dashboard shows a region switch to fallback under lag and back",
  ignore: !chromiumInstalled,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "allot-dashboard-" });
    const run = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "tests/_dashboard_browser.ts", CHROMIUM, dir],
      cwd: new URL("..", import.meta.url),
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const output = new TextDecoder().decode(run.stdout) + new TextDecoder().decode(run.stderr);
    assert.equal(run.code, 0, output);
    for (const name of ["fallback.png", "recovered.png"]) {
      const png = await Deno.readFile(join(dir, name));
      assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], `${name} is a PNG`);
      assert.ok(png.length > 20_000, `${name} has content (${png.length} bytes)`);
    }
    console.log(`screenshots: ${dir}`);
  },
});
