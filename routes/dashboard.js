/**
 * The dashboard's browser side (served as /dashboard.js, no build step). It asks for
 * a bearer token, keeps it in sessionStorage, and polls GET /v1/regions with it; a
 * refused token clears everything but the prompt. Lag history lives here, in a ring
 * buffer of samples per region, since the API reports only the current lag.
 */

/**
 * @typedef {{ at: string, from: string, to: string, reason: string, lagMs: number }} ModeChange
 * @typedef {{
 *   name: string, backup: string | null, lag: { enterMs: number, exitMs: number },
 *   mode: "primary" | "fallback", modeSince: string, modeReason: string,
 *   modeHistory: ModeChange[], lagMs: number, pending: number, deadLettered: number,
 *   total: number, free: number, claimed: number,
 * }} Region
 * @typedef {{ holder: string, resource: string, slot: number, servedBy: string, leaseExpiresAt: string }} Claim
 * @typedef {{ lagMs: number, mode: string }} Sample
 */

const TOKEN_KEY = "allot.dashboard.token";
/** Lag samples kept per region. */
const SAMPLES = 60;
/** Active claims listed per region. */
const CLAIMS_SHOWN = 5;
/** Mode changes listed per region. */
const CHANGES_SHOWN = 5;
const refreshMs = Math.min(
  60_000,
  Math.max(250, Number(new URLSearchParams(location.search).get("refresh")) || 2000),
);

/** A fixed-size buffer that overwrites its oldest sample. */
class Ring {
  /** @param {number} size */
  constructor(size) {
    this.size = size;
    /** @type {Sample[]} */
    this.items = [];
    this.next = 0;
  }

  /** @param {Sample} sample */
  push(sample) {
    if (this.items.length < this.size) this.items.push(sample);
    else this.items[this.next] = sample;
    this.next = (this.next + 1) % this.size;
  }

  /** @returns {Sample[]} oldest first */
  values() {
    return this.items.length < this.size
      ? [...this.items]
      : [...this.items.slice(this.next), ...this.items.slice(0, this.next)];
  }
}

/** @type {Map<string, Ring>} */
const history = new Map();
/** @type {ReturnType<typeof setTimeout> | undefined} */
let timer;
/** Bumped on every sign-in and sign-out, so an answer still in flight is dropped, not drawn. */
let session = 0;

/** @param {string} id */
function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`missing #${id}`);
  return element;
}

/**
 * Builds an element; children are text or nodes (text is never parsed as HTML).
 * @param {string} tag
 * @param {Record<string, string>} attrs
 * @param {(Node | string)[]} children
 */
function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  element.append(...children);
  return element;
}

/**
 * Builds an SVG element.
 * @param {string} tag
 * @param {Record<string, string | number>} attrs
 * @param {(Node | string)[]} children
 */
function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  element.append(...children);
  return element;
}

/** The time of day, after the date when it is not today's. @param {string} iso */
function clock(iso) {
  const at = new Date(iso);
  const time = at.toLocaleTimeString([], { hour12: false });
  if (at.toDateString() === new Date().toDateString()) return time;
  return `${
    at.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" })
  } ${time}`;
}

/** @param {number} n */
function count(n) {
  return n.toLocaleString("en");
}

/** @param {string} text */
function setStatus(text) {
  byId("status").textContent = text;
}

/** @param {string} path */
function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY) ?? "";
  return fetch(path, { headers: { authorization: `Bearer ${token}` } });
}

/** Forgets the token and shows only the prompt. @param {string} message */
function signOut(message) {
  clearTimeout(timer);
  session++;
  sessionStorage.removeItem(TOKEN_KEY);
  history.clear();
  byId("regions").replaceChildren();
  byId("board").hidden = true;
  byId("login").hidden = false;
  byId("login-error").textContent = message;
  setStatus("");
}

/**
 * The region's active claims, or why they cannot be shown. @param {string} region
 * @returns {Promise<Claim[] | string>}
 */
async function activeClaims(region) {
  const res = await api(
    `/v1/regions/${encodeURIComponent(region)}/claims?state=active&limit=${CLAIMS_SHOWN}`,
  );
  if (res.status === 403) return "This token cannot list claims.";
  if (!res.ok) return `Claims are unavailable (HTTP ${res.status}); the next refresh retries.`;
  /** @type {{ items: Claim[] }} */
  const page = await res.json();
  return page.items;
}

/** Starts polling with the stored token, ending any earlier loop. */
function start() {
  clearTimeout(timer);
  session++;
  refresh();
}

async function refresh() {
  const mine = session;
  try {
    /** @type {Region[]} */
    const items = [];
    /** @type {string | null} */
    let cursor = "";
    while (cursor !== null) {
      const query = cursor === "" ? "" : `&cursor=${encodeURIComponent(cursor)}`;
      const res = await api(`/v1/regions?limit=100${query}`);
      if (mine !== session) return;
      if (res.status === 401 || res.status === 403) {
        const problem = await res.json().catch(() => ({ detail: res.statusText }));
        signOut(`That token was refused (${res.status}): ${problem.detail}`);
        return;
      }
      if (!res.ok) throw new Error(`GET /v1/regions answered ${res.status}`);
      /** @type {{ items: Region[], cursor: string | null }} */
      const page = await res.json();
      items.push(...page.items);
      cursor = page.cursor;
    }
    const claims = await Promise.all(items.map((region) => activeClaims(region.name)));
    if (mine !== session) return;
    render(items, claims);
    setStatus(
      `Updated ${new Date().toLocaleTimeString([], { hour12: false })} · refreshes every ${
        refreshMs / 1000
      } s`,
    );
  } catch (error) {
    if (mine !== session) return;
    setStatus(`Cannot reach allot (${error instanceof Error ? error.message : error}); retrying`);
  }
  timer = setTimeout(refresh, refreshMs);
}

/**
 * @param {Region[]} regions
 * @param {(Claim[] | string)[]} claims
 */
function render(regions, claims) {
  byId("login").hidden = true;
  byId("board").hidden = false;
  for (const region of regions) {
    let ring = history.get(region.name);
    if (!ring) history.set(region.name, ring = new Ring(SAMPLES));
    ring.push({ lagMs: region.lagMs, mode: region.mode });
  }
  const cards = regions.map((region, i) => card(region, claims[i]));
  byId("regions").replaceChildren(
    ...(cards.length > 0
      ? cards
      : [h("p", { class: "empty" }, "No regions yet: create one with PUT /v1/regions/{region}.")]),
  );
}

/**
 * @param {Region} region
 * @param {Claim[] | string} claims
 */
function card(region, claims) {
  const used = region.total > 0 ? region.claimed / region.total : 0;
  const bar = h("div", { class: "used" });
  bar.style.width = `${Math.min(100, used * 100).toFixed(1)}%`;
  return h(
    "section",
    {
      class: `card mode-${region.mode}`,
      "data-region": region.name,
      "data-mode": region.mode,
      "data-lag": String(region.lagMs),
    },
    h(
      "header",
      {},
      h("h2", {}, region.name),
      h("span", { class: `badge ${region.mode}` }, region.mode),
      h("span", { class: "muted" }, region.backup ? `backup: ${region.backup}` : "no backup"),
    ),
    h("p", { class: "reason" }, `${region.modeReason} · since ${clock(region.modeSince)}`),
    h("h3", {}, "Pool"),
    h(
      "div",
      { class: "meter", role: "img", "aria-label": `${Math.round(used * 100)}% claimed` },
      bar,
    ),
    h(
      "p",
      { class: "figures" },
      `${count(region.claimed)} of ${count(region.total)} slots claimed (${
        Math.round(used * 100)
      }%) · ${count(region.free)} free`,
    ),
    h("h3", {}, "Queue lag"),
    chart(history.get(region.name)?.values() ?? [], region.lag),
    h(
      "p",
      { class: "figures" },
      `${count(region.lagMs)} ms now · enter ${count(region.lag.enterMs)} ms · exit ${
        count(region.lag.exitMs)
      } ms · ${count(region.pending)} pending · ${
        count(region.deadLettered)
      } updates dead-lettered`,
    ),
    h("h3", {}, "Mode history"),
    modeChanges(region.modeHistory),
    h("h3", {}, `Active claims (${count(region.claimed)})`),
    claimTable(claims, region.claimed),
  );
}

/**
 * Lag samples as a line against the enter/exit thresholds; samples taken in fallback
 * are shaded.
 * @param {Sample[]} samples
 * @param {{ enterMs: number, exitMs: number }} lag
 */
function chart(samples, lag) {
  const width = 320, height = 96, top = 6, bottom = 4, right = 5;
  const max = Math.max(lag.enterMs * 1.25, ...samples.map((s) => s.lagMs * 1.1));
  const y = (/** @type {number} */ ms) => top + (height - top - bottom) * (1 - ms / max);
  const step = (width - right) / (SAMPLES - 1);
  const x = (/** @type {number} */ i) => width - right - (samples.length - 1 - i) * step;
  const shading = samples.flatMap((s, i) =>
    s.mode === "fallback"
      ? [svg("rect", {
        class: "fallback",
        x: x(i) - step / 2,
        y: 0,
        width: step,
        height,
      })]
      : []
  );
  const threshold = (/** @type {number} */ ms, /** @type {string} */ name) => [
    svg("line", { class: `threshold ${name}`, x1: 0, x2: width, y1: y(ms), y2: y(ms) }),
    svg("text", { class: `label ${name}`, x: 4, y: y(ms) - 3 }, `${name} ${count(ms)} ms`),
  ];
  const points = samples.map((s, i) => `${x(i).toFixed(1)},${y(s.lagMs).toFixed(1)}`).join(" ");
  const last = samples.at(-1);
  return svg(
    "svg",
    {
      class: "chart",
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `queue lag over the last ${samples.length} samples`,
    },
    ...shading,
    ...threshold(lag.enterMs, "enter"),
    ...threshold(lag.exitMs, "exit"),
    svg("polyline", { class: "lag", points }),
    ...(last ? [svg("circle", { class: "lag", cx: width - right, cy: y(last.lagMs), r: 3 })] : []),
  );
}

/** @param {ModeChange[]} changes */
function modeChanges(changes) {
  if (changes.length === 0) return h("p", { class: "muted" }, "No changes yet.");
  return h(
    "ol",
    { class: "changes" },
    ...changes.slice(-CHANGES_SHOWN).reverse().map((change) =>
      h(
        "li",
        {},
        h("time", {}, clock(change.at)),
        h("span", { class: `badge ${change.to}` }, `${change.from} → ${change.to}`),
        h("span", { class: "muted" }, change.reason),
      )
    ),
  );
}

/**
 * @param {Claim[] | string} claims the claims, or why they cannot be shown
 * @param {number} total
 */
function claimTable(claims, total) {
  if (typeof claims === "string") return h("p", { class: "muted" }, claims);
  if (claims.length === 0) return h("p", { class: "muted" }, "None.");
  const rows = claims.map((c) =>
    h(
      "tr",
      {},
      h("td", {}, c.holder),
      h("td", {}, `${c.servedBy}/${c.resource}#${c.slot}`),
      h("td", {}, clock(c.leaseExpiresAt)),
    )
  );
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, h("th", {}, "holder"), h("th", {}, "slot"), h("th", {}, "until"))),
    h("tbody", {}, ...rows),
    ...(total > claims.length
      ? [
        h("tfoot", {}, h("tr", {}, h("td", { colspan: "3" }, `and ${total - claims.length} more`))),
      ]
      : []),
  );
}

byId("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = /** @type {HTMLInputElement} */ (byId("token"));
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  byId("login-error").textContent = "";
  setStatus("Loading…");
  start();
});
byId("signout").addEventListener("click", () => signOut(""));
if (sessionStorage.getItem(TOKEN_KEY)) start();
