/**
 * The dashboard at `/`: a server-rendered shell (Hono JSX) that shows nothing but a
 * token prompt until the browser script (/dashboard.js) has a token the API accepts.
 * Data never passes through this page: the script reads /v1/regions with the token.
 */
import { createHash } from "node:crypto";
import { Hono } from "hono";
import { raw } from "hono/html";

const CSS = `
:root { font: 14px/1.45 system-ui, sans-serif; color: #1f2328; background: #f6f8fa; }
body { margin: 0; }
body > header { display: flex; align-items: baseline; gap: 1rem; padding: .8rem 1.5rem;
  background: #24292f; color: #fff; }
body > header h1 { margin: 0; font-size: 1.3rem; }
#status { flex: 1; color: #c9d1d9; }
a.docs { color: #c9d1d9; }
main { padding: 1.5rem; }
button { font: inherit; padding: .35rem .9rem; border-radius: 6px; border: 1px solid #8c959f;
  background: #fff; cursor: pointer; }
#login { max-width: 26rem; margin: 4rem auto; padding: 1.5rem; background: #fff;
  border: 1px solid #d0d7de; border-radius: 8px; }
#login label { display: block; margin-bottom: .6rem; font-weight: 600; }
#login input { width: 100%; box-sizing: border-box; font: inherit; padding: .4rem;
  margin: .4rem 0 .8rem; }
#login-error { color: #cf222e; min-height: 1.2em; margin: .6rem 0 0; }
#regions { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr));
  gap: 1rem; }
.card { background: #fff; border: 1px solid #d0d7de; border-left: 5px solid #1a7f37;
  border-radius: 8px; padding: .8rem 1rem; }
.card.mode-fallback { border-left-color: #bc4c00; }
.card header { display: flex; align-items: baseline; gap: .6rem; }
.card h2 { margin: 0; font-size: 1.25rem; }
.card h3 { margin: .8rem 0 .3rem; font-size: .8rem; text-transform: uppercase;
  letter-spacing: .04em; color: #57606a; }
.badge { font-size: .8rem; padding: .05rem .5rem; border-radius: 1rem; color: #fff;
  background: #1a7f37; white-space: nowrap; }
.badge.fallback { background: #bc4c00; }
.muted { color: #57606a; }
.reason, .figures { margin: .3rem 0; color: #57606a; }
.meter { height: 12px; background: #d8f3dc; border-radius: 6px; overflow: hidden; }
.meter .used { height: 100%; background: #0969da; }
.chart { display: block; width: 100%; height: auto; background: #f6f8fa; border-radius: 4px; }
.chart .fallback { fill: #fb8f44; opacity: .25; }
.chart .threshold { stroke-width: 1; stroke-dasharray: 4 3; }
.chart .threshold.enter { stroke: #cf222e; }
.chart .threshold.exit { stroke: #1a7f37; }
.chart .label { font-size: 9px; }
.chart .label.enter { fill: #cf222e; }
.chart .label.exit { fill: #1a7f37; }
.chart polyline.lag { fill: none; stroke: #0969da; stroke-width: 2; }
.chart circle.lag { fill: #0969da; }
.changes { margin: 0; padding-left: 1.2rem; }
.changes li { margin: .2rem 0; }
.changes time { margin-right: .5rem; font-variant-numeric: tabular-nums; }
.changes .badge { margin-right: .5rem; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: .15rem .4rem .15rem 0; border-bottom: 1px solid #eaeef2; }
tfoot td { color: #57606a; border: 0; }
`;

/** The page allows only its own script and this exact stylesheet (a token lives in it). */
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  `style-src 'sha256-${createHash("sha256").update(CSS).digest("base64")}'`,
  "connect-src 'self'",
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

function Page() {
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>allot · dashboard</title>
        <link rel="icon" href="data:," />
        <style>{raw(CSS)}</style>
      </head>
      <body>
        <header>
          <h1>allot</h1>
          <span id="status" role="status"></span>
          <a class="docs" href="/docs">API docs</a>
        </header>
        <main>
          <form id="login">
            <label for="token">Bearer token</label>
            <span class="muted">
              An admin, agent or client token from ALLOT_TOKENS. It is kept in this tab only.
            </span>
            <input id="token" type="password" autocomplete="off" required />
            <button type="submit">Show dashboard</button>
            <p id="login-error" role="alert"></p>
          </form>
          <div id="board" hidden>
            <p>
              <button id="signout" type="button">Sign out</button>
            </p>
            <div id="regions" aria-live="polite"></div>
          </div>
        </main>
        <script type="module" src="/dashboard.js"></script>
      </body>
    </html>
  );
}

let script: Promise<string> | undefined;

/** The dashboard page and its script. */
export function dashboardRoutes() {
  return new Hono()
    .get("/", (c) => {
      c.header("Content-Security-Policy", CSP);
      c.header("Cache-Control", "no-store");
      c.header("X-Content-Type-Options", "nosniff");
      c.header("Referrer-Policy", "no-referrer");
      return c.html(`<!doctype html>${<Page />}`);
    })
    .get("/dashboard.js", async (c) => {
      script ??= Deno.readTextFile(new URL("./dashboard.js", import.meta.url)).catch((error) => {
        script = undefined;
        throw error;
      });
      c.header("Cache-Control", "no-cache");
      c.header("X-Content-Type-Options", "nosniff");
      return c.body(await script, 200, { "Content-Type": "text/javascript; charset=utf-8" });
    });
}
