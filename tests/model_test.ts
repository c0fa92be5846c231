/**
 * Stateful model-based test (fast-check `asyncModelRun`): random sequences of admin, agent,
 * client and clock commands drive two app instances over one KV through `app.request`, and
 * every answer is checked against a small pure model of the documented behaviour (README,
 * SPEC): statuses, claim states and views, fencing tokens, idempotent replays (same claim,
 * same secret, `Allot-Claim-State`), label matching, lease clamping, consistency tokens,
 * `Retry-After`, pool figures and per-resource `claimed`, claim lists, status reports (per-field
 * last writer wins, a PUT after every report applied before it, a `gone` losing leases, a
 * report from before a DELETE never applying), lag, mode hysteresis and fallback routing.
 * After every command the whole observable state (regions with their health and mode
 * history, resources, every claim, the claim lists) is compared with the model, and the
 * app's own active claims are checked for a slot held twice. Every answer also goes through
 * `makeApp`'s check that its status and headers are the ones /openapi.json lists.
 *
 * Pool figures lag expiry, as the code does (the README only implies it): a lease past
 * `leaseExpiresAt` reads `expired` at once, but its slot stays held (`claimed`, not `free`)
 * until something records the expiry: the region's sweep tick (delivered by hand here, as
 * the queue would), a claim that finds no free slot (it sweeps first), or a renew, release,
 * revoke or removal that finds the lease past its expiry.
 *
 * ALLOT_MODEL_SEED=<n> and ALLOT_MODEL_RUNS=<n> (per step) vary or replay the runs.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { StatusApplier } from "../lib/applier.ts";
import { handleQueueMessage, type StatusBatchMessage } from "../lib/queue.ts";
import { seededRandom } from "../lib/random.ts";
import { readSweeper } from "../lib/sweeper.ts";
import {
  FakeClock,
  leaseQueueDeps,
  listPages,
  makeApp,
  recordEnqueues,
  type TestApp,
  type TestResponse,
  TOKENS,
} from "./_helpers.ts";

const SEED = Number(Deno.env.get("ALLOT_MODEL_SEED") ?? 0xa110);
const RUNS = Number(Deno.env.get("ALLOT_MODEL_RUNS") ?? 40);
const MAX_COMMANDS = 60;

const REGIONS = ["iad", "fra"] as const;
/** Never created: every route naming it answers 404. */
const MISSING_REGION = "lhr";
/** Ids sharing prefixes, to exercise the per-page range scans of the resource list. */
const RESOURCE_IDS = ["r1", "r1.a", "r10", "r2"] as const;
const RESOURCE_LABELS: Labels[] = [
  {},
  { browser: "chromium" },
  { browser: "firefox" },
  { browser: "chromium", gpu: "yes" },
];
const WANTED_LABELS: Array<Labels | undefined> = [
  undefined,
  {},
  { browser: "chromium" },
  { gpu: "yes" },
  { browser: "firefox", gpu: "yes" },
];
const CALLERS = [TOKENS.client, TOKENS.client2] as const;
const DEFAULT_MS = [1000, 4000, 20_000] as const;
const MAX_MS = [2000, 8000, 60_000] as const;
const ASKED_MS = [undefined, 500, 3000, 100_000] as const;
const LAG = { enterMs: 2000, exitMs: 500 };
const ADVANCE_MS = [100, 999, 1000, 2500, 7000, 30_000] as const;

type Labels = Record<string, string>;
type ClaimState = "active" | "released" | "expired" | "lost";
type ResourceState = "ready" | "draining" | "gone";

interface MRegion {
  defaultMs: number;
  maxMs: number;
  backup: string | null;
  enterMs: number;
  exitMs: number;
  mode: "primary" | "fallback";
  createdAt: number;
  updatedAt: number;
  /** Mode changes: what GET region's `modeHistory` lists (reasons aside). */
  history: Array<{ at: number; from: string; to: string; lagMs: number }>;
  /** The backup as of the last mode change (undefined: none since creation). */
  modeBackup?: string | null;
}

interface MResource {
  slots: number;
  labels: Labels;
  state: ResourceState;
  /** The latest PUT or applied status report that changed or confirmed it. */
  updatedAt: number;
  /**
   * Seq each field's value came from (per-field last writer wins; a PUT counts as newer than
   * every report applied before it, for state, slots and labels).
   */
  fieldSeq: { state: number; slots: number; labels: number; load: number };
  load: number | null;
  /** Seq of the newest `gone` report that lost leases (none up to it loses any again). */
  goneSeq: number;
  /** When the report the state came from was accepted (undefined: none since registration). */
  stateAcceptedAt?: number;
}

/** A status update as an agent sends it. */
interface MUpdate {
  resource: string;
  seq: number;
  state: ResourceState;
  slots?: number;
  labels?: Labels;
  load?: number;
}

interface MClaim {
  id: string;
  /** The region asked for. */
  region: string;
  /** The region whose pool holds the slot (the backup's in fallback). */
  servedBy: string;
  resource: string;
  slot: number;
  holder: string;
  secret: string;
  fencingToken: string;
  leaseMs: number;
  createdAt: number;
  expiresAt: number;
  /** As recorded: a lease past its expiry may still say `active` here (see viewOf). */
  state: ClaimState;
  endedAt: number | null;
  reason: string | null;
  /** Whether its slot (and lease index entry) is still held: until its end is recorded. */
  held: boolean;
  /** The 201 body, for replays. */
  grant: Record<string, unknown>;
  /** When it was granted, in command order (a `gone` cuts its lease loss by it). */
  order: number;
  /** The Allot-Consistency-Token of its release (a release resent answers it again). */
  releaseToken?: string | null;
}

/** A status batch accepted (202) and not yet applied. */
interface MPending {
  region: string;
  at: number;
  /** When it was accepted, in command order. */
  order: number;
  updates: MUpdate[];
  message: StatusBatchMessage;
}

/** Where a claim is routed (fallback.ts's documented rules). */
interface Route {
  servedBy: string;
  mode: "primary" | "fallback";
  lagMs: number;
  note: string | null;
}

/** The reference model: pure data, updated by the commands as the docs say the app behaves. */
class Model {
  now = new FakeClock().now();
  regions = new Map<string, MRegion>();
  resources = new Map<string, Map<string, MResource>>();
  claims: MClaim[] = [];
  /** `${caller} ${region} ${key}` → the claim it produced and the body it was asked with. */
  idem = new Map<string, { body: string; claim: MClaim }>();
  /** Highest fencing token granted per `${pool}/${resource}`. */
  fences = new Map<string, string>();
  /** Last status seq sent per `${region}/${id}` (agents count upwards across re-registrations). */
  seqs = new Map<string, number>();
  /** Highest status seq applied per `${region}/${id}` (kept across a deletion: tombstones). */
  applied = new Map<string, number>();
  pending: MPending[] = [];
  /** When each `${region}/${id}` was last deleted, in command order. */
  deleted = new Map<string, number>();
  /** Orders grants and status acceptances. */
  ops = 0;

  resourcesOf(region: string): Map<string, MResource> {
    let map = this.resources.get(region);
    if (!map) this.resources.set(region, map = new Map());
    return map;
  }

  heldOn(pool: string, resource: string): MClaim[] {
    return this.claims.filter((c) => c.held && c.servedBy === pool && c.resource === resource);
  }

  /** Slots a claim with `wanted` labels could take now, without any sweep. */
  freeSlots(pool: string, wanted?: Labels): Array<[string, number]> {
    const out: Array<[string, number]> = [];
    for (const [id, spec] of this.resourcesOf(pool)) {
      if (spec.state !== "ready" || !labelsMatch(spec.labels, wanted)) continue;
      const held = new Set(this.heldOn(pool, id).map((c) => c.slot));
      for (let slot = 0; slot < spec.slots; slot++) if (!held.has(slot)) out.push([id, slot]);
    }
    return out;
  }

  /** Held leases of the pool past their expiry: what a sweep would record. */
  due(pool: string): MClaim[] {
    return this.claims.filter((c) =>
      c.held && c.servedBy === pool && c.state === "active" && c.expiresAt <= this.now
    );
  }

  /** Records the end of a lease (its slot is free again if its spec allows). */
  end(claim: MClaim, state: Exclude<ClaimState, "active">, reason: string | null): void {
    assert.equal(claim.state, "active", `model: ending ${claim.id} twice`);
    claim.state = state;
    claim.endedAt = state === "expired" ? claim.expiresAt : this.now;
    claim.reason = reason;
    claim.held = false;
  }

  expire(claim: MClaim): void {
    this.end(claim, "expired", "lease expired");
  }

  sweep(pool: string): void {
    for (const claim of this.due(pool)) this.expire(claim);
  }

  pool(region: string): { total: number; free: number; claimed: number } {
    let total = 0;
    for (const spec of this.resourcesOf(region).values()) {
      if (spec.state !== "gone") total += spec.slots;
    }
    return {
      total,
      free: this.freeSlots(region).length,
      claimed: this.claims.filter((c) => c.held && c.servedBy === region).length,
    };
  }

  pendingOf(region: string): MPending[] {
    return this.pending.filter((p) => p.region === region);
  }

  /** Age of the region's oldest unapplied status update (0: none), and how many wait. */
  lag(region: string): { lagMs: number; pending: number } {
    const mine = this.pendingOf(region);
    if (mine.length === 0) return { lagMs: 0, pending: 0 };
    return {
      lagMs: this.now - Math.min(...mine.map((p) => p.at)),
      pending: mine.reduce((n, p) => n + p.updates.length, 0),
    };
  }

  /** Why a backup cannot take claims now (null: it can): missing, fallback, lagging, exhausted. */
  backupRefusal(backup: string): "missing" | "fallback" | "lagging" | "exhausted" | null {
    const config = this.regions.get(backup);
    if (!config) return "missing";
    if (config.mode === "fallback") return "fallback";
    if (this.lag(backup).lagMs > config.enterMs) return "lagging";
    if (this.pool(backup).free <= 0) return "exhausted";
    return null;
  }

  /** One mode evaluation, with hysteresis (every claim, region read and status apply runs one). */
  evaluate(region: string): void {
    const config = this.regions.get(region)!;
    const { lagMs } = this.lag(region);
    let to: "primary" | "fallback" | null = null;
    if (config.mode === "primary") {
      if (
        lagMs > config.enterMs && config.backup !== null &&
        this.backupRefusal(config.backup) === null
      ) to = "fallback";
    } else if (config.backup === null || lagMs < config.exitMs) to = "primary";
    // A backup replaced while in fallback: a change to fallback on the new one.
    else if (config.modeBackup !== undefined && config.modeBackup !== config.backup) {
      to = "fallback";
    }
    if (to === null) return;
    config.history.push({ at: this.now, from: config.mode, to, lagMs });
    config.mode = to;
    config.modeBackup = config.backup;
  }

  /** Where a new claim for `region` is served (after evaluating its mode). */
  route(region: string): Route {
    this.evaluate(region);
    const config = this.regions.get(region)!;
    const { lagMs } = this.lag(region);
    const own: Route = { servedBy: region, mode: config.mode, lagMs, note: null };
    if (config.backup === null || (config.mode === "primary" && lagMs <= config.enterMs)) {
      return own;
    }
    const backup = config.backup;
    let refusal = this.backupRefusal(backup);
    // In fallback, a full backup with a lease past its expiry takes the claim (it sweeps).
    const overdue = this.claims.some((c) =>
      c.held && c.servedBy === backup && c.expiresAt <= this.now
    );
    if (refusal === "exhausted" && config.mode === "fallback" && overdue) refusal = null;
    if (refusal === null) {
      return config.mode === "primary"
        ? own
        : { servedBy: backup, mode: "fallback", lagMs: this.lag(backup).lagMs, note: null };
    }
    const backupLag = this.lag(backup).lagMs;
    const fresher = (refusal === "lagging" || refusal === "fallback") && backupLag < lagMs;
    return {
      servedBy: fresher ? backup : region,
      mode: config.mode,
      lagMs: fresher ? backupLag : lagMs,
      note: "fallback refused",
    };
  }
}

/** What the commands act on: two app instances (isolates) over one KV, sharing one clock. */
interface Real {
  apps: [TestApp, TestApp];
  clock: FakeClock;
  /** Messages the apps' commits enqueued (the queue itself is played by hand). */
  enqueued: unknown[];
}

function labelsMatch(labels: Labels, wanted: Labels | undefined): boolean {
  return wanted === undefined || Object.entries(wanted).every(([k, v]) => labels[k] === v);
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** JSON with sorted object keys: two bodies are the same request iff these are equal. */
function canonical(value: unknown): string {
  return JSON.stringify(
    value,
    (_k, v) =>
      v && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1)))
        : v,
  );
}

/** A claim as GET /v1/claims/{id} documents it, as of `now`. */
function viewOf(c: MClaim, now: number): Record<string, unknown> {
  const expired = c.state === "active" && c.expiresAt <= now;
  return {
    id: c.id,
    region: c.region,
    servedBy: c.servedBy,
    resource: c.resource,
    slot: c.slot,
    holder: c.holder,
    state: expired ? "expired" : c.state,
    fencingToken: c.fencingToken,
    leaseMs: c.leaseMs,
    createdAt: iso(c.createdAt),
    leaseExpiresAt: iso(c.expiresAt),
    endedAt: expired ? iso(c.expiresAt) : c.endedAt === null ? null : iso(c.endedAt),
    reason: expired ? "lease expired" : c.reason,
  };
}

function stateNow(c: MClaim, now: number): ClaimState {
  return c.state === "active" && c.expiresAt <= now ? "expired" : c.state;
}

function expectStatus(res: TestResponse, status: number, what: string): void {
  assert.equal(
    res.status,
    status,
    `${what}: expected ${status}, got ${res.status} ${JSON.stringify(res.body)}`,
  );
}

/** A write's consistency token: in the Allot-Consistency-Token header and in the body. */
function assertToken(res: TestResponse, what: string): void {
  const token = res.headers.get("allot-consistency-token");
  assert.match(token ?? "", /^[0-9a-f]{20}$/, `${what}: Allot-Consistency-Token`);
  assert.equal(res.body.consistencyToken, token, `${what}: the body's consistencyToken`);
}

function pick<T>(items: readonly T[], index: number): T {
  return items[index % items.length];
}

/** Compares everything observable with the model, and checks exclusivity on the app's own word. */
async function checkAll(m: Model, r: Real): Promise<void> {
  const t = r.apps[0];
  assert.equal(r.clock.now(), m.now, "model and app clocks agree");
  for (const region of REGIONS) {
    const config = m.regions.get(region);
    const got = await t.request("GET", `/v1/regions/${region}`, { token: TOKENS.client });
    if (!config) {
      expectStatus(got, 404, `GET region ${region}`);
      continue;
    }
    expectStatus(got, 200, `GET region ${region}`);
    m.evaluate(region); // a region read evaluates its mode
    const { total, free, claimed, lease, lag, backup, mode, lagMs, pending, updatedAt } = got.body;
    const modeSince = got.body.modeSince;
    assert.deepEqual(
      { total, free, claimed },
      m.pool(region),
      `pool figures of ${region} (total, free, claimed)`,
    );
    assert.deepEqual(
      { lease, lag, backup, mode, ...m.lag(region), modeSince, updatedAt },
      {
        modeSince: iso(config.history.at(-1)?.at ?? config.createdAt),
        updatedAt: iso(config.updatedAt),
        lease: { defaultMs: config.defaultMs, maxMs: config.maxMs },
        lag: { enterMs: config.enterMs, exitMs: config.exitMs },
        backup: config.backup,
        mode: config.mode,
        lagMs,
        pending,
      },
      `configuration and health of ${region}`,
    );
    assert.deepEqual(
      got.body.modeHistory.map((h: { at: string; from: string; to: string; lagMs: number }) => ({
        at: Date.parse(h.at),
        from: h.from,
        to: h.to,
        lagMs: h.lagMs,
      })),
      config.history.slice(-20),
      `mode history of ${region}`,
    );

    const { items: resources } = await listPages(
      t,
      `/v1/regions/${region}/resources?limit=2`,
      TOKENS.client,
    );
    const expected = [...m.resourcesOf(region)].sort(([a], [b]) => (a < b ? -1 : 1)).map((
      [id, spec],
    ) => ({
      id,
      region,
      slots: spec.slots,
      labels: spec.labels,
      state: spec.state,
      seq: m.applied.get(`${region}/${id}`) ?? 0,
      load: spec.load,
      claimed: m.heldOn(region, id).length,
      updatedAt: iso(spec.updatedAt),
    }));
    assert.deepEqual(resources, expected, `resources of ${region} (with claimed per resource)`);

    const { items: all } = await listPages(t, `/v1/regions/${region}/claims`, TOKENS.client);
    const mine = m.claims.filter((c) => c.servedBy === region).sort((a, b) => a.id < b.id ? -1 : 1);
    assert.deepEqual(all, mine.map((c) => viewOf(c, m.now)), `claims of ${region}, by id`);

    const { items: active } = await listPages<
      { resource: string; slot: number; leaseExpiresAt: string }
    >(
      t,
      `/v1/regions/${region}/claims?state=active&limit=3`,
      TOKENS.admin,
    );
    const live = mine.filter((c) => stateNow(c, m.now) === "active").sort((a, b) =>
      a.expiresAt - b.expiresAt || (a.id < b.id ? -1 : 1)
    );
    assert.deepEqual(
      active,
      live.map((c) => viewOf(c, m.now)),
      `active claims of ${region}, soonest expiry first`,
    );
    // Exclusivity on the app's own word, whatever the model says.
    const places = active.map((c) => `${c.resource}#${c.slot}`);
    assert.equal(new Set(places).size, places.length, `a slot of ${region} held twice: ${places}`);
    for (const c of active) assert.ok(Date.parse(c.leaseExpiresAt) > m.now, "active is unexpired");
  }
}

// ---------------------------------------------------------------------------------------
// Commands

type Cmd = fc.AsyncCommand<Model, Real>;

class PutRegion implements Cmd {
  constructor(
    readonly region: string,
    readonly defaultMs: number,
    readonly maxMs: number,
    readonly backup: string | null,
    readonly lag: { enterMs: number; exitMs: number },
    readonly app: number,
  ) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const body = {
      backup: this.backup,
      lag: this.lag,
      lease: { defaultMs: this.defaultMs, maxMs: this.maxMs },
    };
    const res = await r.apps[this.app].request("PUT", `/v1/regions/${this.region}`, { body });
    const what = this.toString();
    if (this.defaultMs > this.maxMs) {
      expectStatus(res, 422, what);
      assert.equal(res.body.field ?? res.body.errors?.[0]?.field, "lease.defaultMs");
      return;
    }
    if (this.backup !== null && (this.backup === this.region || !m.regions.has(this.backup))) {
      expectStatus(res, 422, what);
      assert.equal(res.body.field ?? res.body.errors?.[0]?.field, "backup");
      return;
    }
    const before = m.regions.get(this.region);
    expectStatus(res, before ? 200 : 201, what);
    assertToken(res, what);
    // A replace keeps the region's mode and history; a new region starts primary.
    m.regions.set(this.region, {
      defaultMs: this.defaultMs,
      maxMs: this.maxMs,
      backup: this.backup,
      ...this.lag,
      mode: before?.mode ?? "primary",
      history: before?.history ?? [],
      modeBackup: before?.modeBackup,
      createdAt: before?.createdAt ?? m.now,
      updatedAt: m.now,
    });
    m.evaluate(this.region); // its answer reads the region back
    assert.equal(res.body.mode, m.regions.get(this.region)!.mode, `${what}: mode`);
  }
  toString() {
    return `PutRegion(${this.region}, lease ${this.defaultMs}/${this.maxMs}, lag ${this.lag.enterMs}/${this.lag.exitMs}, backup ${this.backup})`;
  }
}

class PutResource implements Cmd {
  constructor(
    readonly region: string,
    readonly id: string,
    readonly slots: number,
    readonly labels: Labels,
    readonly state: ResourceState,
    readonly app: number,
  ) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await r.apps[this.app].request(
      "PUT",
      `/v1/regions/${this.region}/resources/${this.id}`,
      { token: TOKENS.agent, body: { slots: this.slots, labels: this.labels, state: this.state } },
    );
    const what = this.toString();
    if (!m.regions.has(this.region)) return expectStatus(res, 404, what);
    const pool = m.resourcesOf(this.region);
    expectStatus(res, pool.has(this.id) ? 200 : 201, what);
    assertToken(res, what);
    const held = m.heldOn(this.region, this.id);
    if (this.state === "gone") {
      // Its live leases become lost; one already past its expiry is recorded expired.
      for (const c of held) {
        if (c.expiresAt <= m.now) m.expire(c);
        else m.end(c, "lost", "resource gone");
      }
    }
    pool.set(this.id, {
      slots: this.slots,
      labels: this.labels,
      state: this.state,
      updatedAt: m.now,
      // A PUT comes after every report applied before it; one that registers the resource
      // (again) keeps no load.
      ...putSeqs(pool.get(this.id), m.applied.get(`${this.region}/${this.id}`) ?? 0),
    });
    assert.equal(res.body.claimed, this.state === "gone" ? 0 : held.length, `${what}: claimed`);
    assert.deepEqual(
      [res.body.slots, res.body.labels, res.body.state],
      [this.slots, this.labels, this.state],
    );
  }
  toString() {
    return `PutResource(${this.region}/${this.id}, slots ${this.slots}, ${
      JSON.stringify(this.labels)
    }, ${this.state})`;
  }
}

class DeleteResource implements Cmd {
  constructor(readonly region: string, readonly id: string, readonly app: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await r.apps[this.app].request(
      "DELETE",
      `/v1/regions/${this.region}/resources/${this.id}`,
      { token: TOKENS.agent },
    );
    const pool = m.resourcesOf(this.region);
    if (!m.regions.has(this.region) || !pool.has(this.id)) {
      return expectStatus(res, 404, this.toString());
    }
    expectStatus(res, 200, this.toString());
    for (const c of m.heldOn(this.region, this.id)) {
      if (c.expiresAt <= m.now) m.expire(c);
      else m.end(c, "lost", "resource deleted");
    }
    pool.delete(this.id);
    m.deleted.set(`${this.region}/${this.id}`, ++m.ops);
  }
  toString() {
    return `DeleteResource(${this.region}/${this.id})`;
  }
}

/**
 * The report bookkeeping a PUT leaves over what was there (`applied`: the highest seq applied,
 * kept by a deletion's tombstone): it comes after every report applied before it for state,
 * slots and labels; one that registers the resource (again) keeps no load.
 */
function putSeqs(
  before: MResource | undefined,
  applied: number,
): Pick<MResource, "fieldSeq" | "load" | "goneSeq" | "stateAcceptedAt"> {
  if (before === undefined) {
    const fieldSeq = { state: applied, slots: applied, labels: applied, load: applied };
    return { fieldSeq, load: null, goneSeq: applied };
  }
  const f = before.fieldSeq;
  return {
    fieldSeq: {
      state: Math.max(f.state, applied),
      slots: Math.max(f.slots, applied),
      labels: Math.max(f.labels, applied),
      load: f.load,
    },
    load: before.load,
    goneSeq: before.goneSeq,
    stateAcceptedAt: before.stateAcceptedAt,
  };
}

/** Deletes a region (admin): 409 while it has resources, status waiting, or backs another up. */
class DeleteRegion implements Cmd {
  constructor(readonly region: string, readonly clear: boolean, readonly app: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    if (this.clear && m.regions.has(this.region)) {
      // Delete its resources first, as an operator would (each answer checked).
      for (const id of [...m.resourcesOf(this.region).keys()]) {
        await new DeleteResource(this.region, id, this.app).run(m, r);
      }
    }
    const res = await r.apps[this.app].request("DELETE", `/v1/regions/${this.region}`);
    const what = this.toString();
    if (!m.regions.has(this.region)) return expectStatus(res, 404, what);
    const dependant = [...m.regions.values()].some((c) => c.backup === this.region);
    const busy = m.resourcesOf(this.region).size > 0 || m.pendingOf(this.region).length > 0;
    if (busy || dependant) return expectStatus(res, 409, what);
    expectStatus(res, 200, what);
    m.regions.delete(this.region);
  }
  toString() {
    return `DeleteRegion(${this.region}${this.clear ? ", its resources first" : ""})`;
  }
}

/** What a claim command asks for. */
interface ClaimAsk {
  region: string;
  caller: number;
  holder: string;
  leaseMs?: number;
  labels?: Labels;
  key?: string;
}

function claimBody(ask: ClaimAsk): Record<string, unknown> {
  return {
    holder: ask.holder,
    ...(ask.leaseMs === undefined ? {} : { leaseMs: ask.leaseMs }),
    ...(ask.labels === undefined ? {} : { labels: ask.labels }),
  };
}

/** Checks a claim answer against the model and records what it granted. */

/**
 * The model's record of a claim the app just granted: where and to whom as the model
 * expects, the rest (ids, secret, tokens) from its 201 body `g`.
 */
function grantedClaim(
  m: Model,
  g: TestResponse["body"],
  expected: { region: string; servedBy: string; holder: string; leaseMs: number },
): MClaim {
  const { leaseMs } = expected;
  return {
    ...expected,
    id: g.id,
    resource: g.resource,
    slot: g.slot,
    secret: g.secret,
    fencingToken: g.fencingToken,
    createdAt: m.now,
    expiresAt: m.now + leaseMs,
    state: "active",
    endedAt: null,
    reason: null,
    held: true,
    grant: g,
    order: ++m.ops,
  };
}

function expectClaim(m: Model, ask: ClaimAsk, res: TestResponse, what: string): void {
  if (!m.regions.has(ask.region)) return expectStatus(res, 404, what);
  const body = claimBody(ask);
  const idemKey = ask.key === undefined ? null : `${ask.caller} ${ask.region} ${ask.key}`;
  const earlier = idemKey === null ? undefined : m.idem.get(idemKey);
  if (earlier !== undefined) {
    if (earlier.body !== canonical(body)) {
      expectStatus(res, 422, `${what} (same key, another body)`);
      assert.equal(res.body.field ?? res.body.errors?.[0]?.field, "Idempotency-Key");
      return;
    }
    expectStatus(res, 201, `${what} (replay)`);
    assertToken(res, what);
    assert.deepEqual(res.body, earlier.claim.grant, `${what}: a replay answers the first grant`);
    assert.equal(res.headers.get("idempotent-replayed"), "true");
    assert.equal(
      res.headers.get("allot-claim-state"),
      stateNow(earlier.claim, m.now),
      `${what}: Allot-Claim-State says what became of the claim`,
    );
    return;
  }
  // Routed by the region's mode: its own pool, or its backup's; a backup that runs out
  // between routing and claiming hands over to the region's own pool.
  const route = m.route(ask.region);
  const pools = route.servedBy === ask.region ? [ask.region] : [route.servedBy, ask.region];
  let servedBy: string | null = null;
  let candidates: Array<[string, number]> = [];
  for (const pool of pools) {
    candidates = m.freeSlots(pool, ask.labels);
    if (candidates.length === 0) {
      // A claim that finds no free slot sweeps the pool's overdue leases, then reads again.
      m.sweep(pool);
      candidates = m.freeSlots(pool, ask.labels);
    }
    if (candidates.length > 0) {
      servedBy = pool;
      break;
    }
  }
  if (servedBy === null) {
    expectStatus(res, 503, `${what} (no capacity)`);
    // Until the soonest lease expiry, 1–60 s (5 with no lease), in the pools tried and, in
    // fallback or refused it, the backup not tried.
    const backup = m.regions.get(ask.region)!.backup;
    const waitPools = backup !== null && !pools.includes(backup) &&
        (route.mode === "fallback" || route.note !== null)
      ? [...pools, backup]
      : pools;
    const soonest = Math.min(
      ...m.claims.filter((c) => c.held && waitPools.includes(c.servedBy)).map((c) => c.expiresAt),
    );
    const wait = soonest === Infinity
      ? 5
      : Math.min(60, Math.max(1, Math.ceil((soonest - m.now) / 1000)));
    assert.equal(res.headers.get("retry-after"), String(wait), `${what}: Retry-After`);
    return;
  }
  expectStatus(res, 201, what);
  assertToken(res, what);
  const g = res.body;
  assert.ok(
    candidates.some(([id, slot]) => id === g.resource && slot === g.slot),
    `${what}: granted ${g.servedBy}/${g.resource}#${g.slot}, not one of the free matching slots ${
      JSON.stringify(candidates)
    } of ${servedBy}`,
  );
  const config = m.regions.get(ask.region)!;
  const leaseMs = Math.min(ask.leaseMs ?? config.defaultMs, config.maxMs);
  assert.match(g.id, new RegExp(`^${servedBy}\\.[0-9A-Z]{26}$`));
  assert.match(g.fencingToken, /^[0-9a-f]{24}$/);
  assert.match(g.consistencyToken, /^[0-9a-f]{20}$/);
  assert.equal(typeof g.secret, "string");
  assert.equal(res.headers.get("idempotent-replayed"), null);
  assert.equal(res.headers.get("location"), `/v1/claims/${g.id}`);
  assert.equal(res.headers.get("allot-served-by"), servedBy);
  const fenceKey = `${servedBy}/${g.resource}`;
  const last = m.fences.get(fenceKey);
  assert.ok(
    last === undefined || g.fencingToken > last,
    `${what}: fencing token ${g.fencingToken} not above ${last} on ${fenceKey}`,
  );
  m.fences.set(fenceKey, g.fencingToken);
  const claim = grantedClaim(m, g, { region: ask.region, servedBy, holder: ask.holder, leaseMs });
  const routed = servedBy === route.servedBy;
  assert.deepEqual(g, {
    ...viewOf(claim, m.now),
    mode: route.mode,
    lagMs: routed ? route.lagMs : m.lag(ask.region).lagMs,
    note: g.note,
    secret: g.secret,
    consistencyToken: g.consistencyToken,
  }, `${what}: the grant`);
  if (!routed) {
    assert.equal(g.note, `backup "${route.servedBy}" ran out; served by "${servedBy}"`);
  } else if (route.note === null) assert.equal(g.note, null, `${what}: note`);
  else assert.match(g.note, /^fallback refused \(/, `${what}: note`);
  m.claims.push(claim);
  if (idemKey !== null) m.idem.set(idemKey, { body: canonical(body), claim });
}

class Claim implements Cmd {
  constructor(readonly ask: ClaimAsk, readonly app: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const { ask } = this;
    const res = await r.apps[this.app].request("POST", `/v1/regions/${ask.region}/claims`, {
      token: CALLERS[ask.caller],
      body: claimBody(ask),
      headers: ask.key === undefined ? {} : { "idempotency-key": ask.key },
    });
    expectClaim(m, ask, res, this.toString());
  }
  toString() {
    return `Claim(${JSON.stringify(this.ask)}, app ${this.app})`;
  }
}

/** The same key and body again (a retry after a lost answer): replays the first grant. */
class ReplayClaim implements Cmd {
  constructor(readonly which: number, readonly app: number) {}
  check = (m: Readonly<Model>) => m.idem.size > 0;
  async run(m: Model, r: Real) {
    const [key, { claim }] = pick([...m.idem], this.which);
    const [caller, region, idemKey] = key.split(" ");
    const grant = claim.grant;
    const ask: ClaimAsk = { ...JSON.parse(m.idem.get(key)!.body), region, caller: +caller };
    ask.key = idemKey;
    const res = await r.apps[this.app].request("POST", `/v1/regions/${region}/claims`, {
      token: CALLERS[+caller],
      body: claimBody(ask),
      headers: { "idempotency-key": idemKey },
    });
    expectClaim(m, ask, res, `${this} of ${grant.id}`);
  }
  toString() {
    return `ReplayClaim(#${this.which}, app ${this.app})`;
  }
}

/** k claims at once through one instance (group commit); the region has nothing overdue. */
class ClaimBurst implements Cmd {
  constructor(readonly region: string, readonly k: number, readonly app: number) {}
  check = (m: Readonly<Model>) =>
    m.regions.has(this.region) && (m as Model).due(this.region).length === 0 &&
    m.pendingOf(this.region).length === 0;
  async run(m: Model, r: Real) {
    const free = m.freeSlots(this.region);
    const answers = await Promise.all(
      Array.from(
        { length: this.k },
        (_, i) =>
          r.apps[(this.app + i) % 2].request("POST", `/v1/regions/${this.region}/claims`, {
            token: TOKENS.client,
            body: { holder: `burst-${i}` },
          }),
      ),
    );
    const granted = answers.filter((a) => a.status === 201);
    assert.equal(
      granted.length,
      Math.min(this.k, free.length),
      `${this}: ${free.length} free, statuses ${answers.map((a) => a.status)}`,
    );
    for (const a of answers) if (a.status !== 201) expectStatus(a, 503, `${this}`);
    const places = granted.map((a) => `${a.body.resource}#${a.body.slot}`);
    assert.equal(new Set(places).size, places.length, `${this}: a slot granted twice`);
    recordGrants(m, this.region, answers, "burst", `${this}`);
  }
  toString() {
    return `ClaimBurst(${this.region}, ${this.k}, app ${this.app})`;
  }
}

/**
 * k claims at once, through both instances, in a region whose status lags (so its mode may
 * switch to fallback under them): each grant is a distinct slot free before, of the region's
 * pool or its backup's, with the region's mode after one evaluation; the rest are 503.
 */
class SwitchBurst implements Cmd {
  constructor(readonly region: string, readonly k: number, readonly app: number) {}
  check = (m: Readonly<Model>) => {
    const config = m.regions.get(this.region);
    const model = m as Model;
    return config !== undefined && config.backup !== null &&
      m.pendingOf(this.region).length > 0 && model.due(this.region).length === 0 &&
      model.due(config.backup).length === 0;
  };
  async run(m: Model, r: Real) {
    const config = m.regions.get(this.region)!;
    const pools = [this.region, config.backup!];
    const free = new Set(
      pools.flatMap((pool) => m.freeSlots(pool).map(([id, slot]) => `${pool}/${id}#${slot}`)),
    );
    const answers = await Promise.all(
      Array.from(
        { length: this.k },
        (_, i) =>
          r.apps[(this.app + i) % 2].request("POST", `/v1/regions/${this.region}/claims`, {
            token: TOKENS.client,
            body: { holder: `switch-${i}` },
          }),
      ),
    );
    const what = this.toString();
    for (const a of answers) if (a.status !== 201) expectStatus(a, 503, what);
    const granted = answers.filter((a) => a.status === 201).map((a) => a.body);
    const places = granted.map((g) => `${g.servedBy}/${g.resource}#${g.slot}`);
    assert.equal(new Set(places).size, places.length, `${what}: a slot granted twice`);
    for (const p of places) assert.ok(free.has(p), `${what}: granted ${p}, not free before`);
    m.evaluate(this.region); // the first claim's evaluation decides; later ones change nothing
    granted.sort((x, y) => (x.fencingToken < y.fencingToken ? -1 : 1));
    for (const g of granted) {
      const fenceKey = `${g.servedBy}/${g.resource}`;
      const last = m.fences.get(fenceKey);
      assert.ok(last === undefined || g.fencingToken > last, `${what}: fencing token`);
      m.fences.set(fenceKey, g.fencingToken);
      const leaseMs = Math.min(config.defaultMs, config.maxMs);
      const claim = grantedClaim(m, g, {
        region: this.region,
        servedBy: g.servedBy,
        holder: g.holder,
        leaseMs,
      });
      assert.match(g.id, new RegExp(`^${g.servedBy}\\.[0-9A-Z]{26}$`));
      const { mode, lagMs: _l, note: _n, secret: _s, consistencyToken: _c, ...view } = g;
      assert.deepEqual(view, viewOf(claim, m.now), `${what}: the grant`);
      assert.equal(mode, config.mode, `${what}: the grant's mode`);
      m.claims.push(claim);
    }
  }
  toString() {
    return `SwitchBurst(${this.region}, ${this.k}, app ${this.app})`;
  }
}

/** Records a burst's grants as lone claims would have been, in commit (fencing token) order. */
function recordGrants(
  m: Model,
  region: string,
  answers: TestResponse[],
  holder: string,
  what: string,
): void {
  const granted = answers.map((a, i) => ({ a, i })).filter(({ a }) => a.status === 201);
  granted.sort((x, y) => (x.a.body.fencingToken < y.a.body.fencingToken ? -1 : 1));
  for (const { a, i } of granted) {
    expectClaim(m, { region, caller: 0, holder: `${holder}-${i}` }, a, what);
  }
}

/**
 * Releases of some of a region's claims racing k claims there, through both instances: each
 * release answers as alone; the claims take distinct slots, free before or freed by those
 * releases, at least as many as were free before (up to k), the rest 503.
 */
class MixedBurst implements Cmd {
  constructor(
    readonly region: string,
    readonly releases: number[],
    readonly k: number,
    readonly app: number,
  ) {}
  check = (m: Readonly<Model>) =>
    m.regions.has(this.region) && (m as Model).due(this.region).length === 0 &&
    m.claims.some((c) => c.servedBy === this.region) && m.pendingOf(this.region).length === 0;
  async run(m: Model, r: Real) {
    const mine = m.claims.filter((c) => c.servedBy === this.region);
    const seen = new Set<MClaim>();
    const ending = this.releases.map((w) => pick(mine, w)).filter((c) =>
      !seen.has(c) && seen.add(c)
    );
    const before = m.freeSlots(this.region).map(([id, slot]) => `${id}#${slot}`);
    const requests = [
      ...ending.map((c, i) => () =>
        r.apps[(this.app + i) % 2].request("DELETE", `/v1/claims/${c.id}`, {
          token: TOKENS.client,
          headers: secretHeader(c, "good"),
        })
      ),
      ...Array.from(
        { length: this.k },
        (_, i) => () =>
          r.apps[(this.app + i + 1) % 2].request("POST", `/v1/regions/${this.region}/claims`, {
            token: TOKENS.client,
            body: { holder: `mix-${i}` },
          }),
      ),
    ];
    const answers = await Promise.all(requests.map((send) => send()));
    const released = answers.slice(0, ending.length);
    const claimed = answers.slice(ending.length);
    ending.forEach((c, i) => expectRelease(m, c, "good", released[i], `${this}: release ${c.id}`));
    const after = m.freeSlots(this.region).map(([id, slot]) => `${id}#${slot}`);
    const granted = claimed.filter((a) => a.status === 201);
    for (const a of claimed) if (a.status !== 201) expectStatus(a, 503, `${this}`);
    const places = granted.map((a) => `${a.body.resource}#${a.body.slot}`);
    assert.equal(new Set(places).size, places.length, `${this}: a slot granted twice`);
    for (const p of places) assert.ok(after.includes(p), `${this}: granted ${p}, not free`);
    assert.ok(
      granted.length >= Math.min(this.k, before.length) &&
        granted.length <= Math.min(this.k, after.length),
      `${this}: ${granted.length} granted with ${before.length} free before, ${after.length} after`,
    );
    recordGrants(m, this.region, claimed, "mix", `${this}`);
  }
  toString() {
    return `MixedBurst(${this.region}, release ${JSON.stringify(this.releases)}, claims ${this.k})`;
  }
}

class GetResource implements Cmd {
  constructor(readonly region: string, readonly id: string, readonly app: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await r.apps[this.app].request(
      "GET",
      `/v1/regions/${this.region}/resources/${this.id}`,
      { token: TOKENS.client },
    );
    const spec = m.regions.has(this.region) ? m.resourcesOf(this.region).get(this.id) : undefined;
    if (spec === undefined) return expectStatus(res, 404, this.toString());
    expectStatus(res, 200, this.toString());
    assert.deepEqual(res.body, {
      id: this.id,
      region: this.region,
      slots: spec.slots,
      labels: spec.labels,
      state: spec.state,
      seq: m.applied.get(`${this.region}/${this.id}`) ?? 0,
      load: spec.load,
      claimed: m.heldOn(this.region, this.id).length,
      updatedAt: iso(spec.updatedAt),
    }, this.toString());
  }
  toString() {
    return `GetResource(${this.region}/${this.id})`;
  }
}

/**
 * The same Idempotency-Key and body sent n times at once (retries racing the first), through
 * one instance or both: one claim at most, every 201 is that claim with its secret. Through
 * one instance every retry waits for the first and replays it (README); through two, a retry
 * may instead get the 503 the pool warrants.
 */
class KeyedBurst implements Cmd {
  constructor(
    readonly region: string,
    readonly n: number,
    readonly key: string,
    readonly both: boolean,
    readonly app: number,
  ) {}
  check = (m: Readonly<Model>) =>
    (m as Model).due(this.region).length === 0 && m.pendingOf(this.region).length === 0;
  async run(m: Model, r: Real) {
    const ask: ClaimAsk = { region: this.region, caller: 0, holder: "keyed", key: this.key };
    const answers = await Promise.all(
      Array.from(
        { length: this.n },
        (_, i) =>
          r.apps[this.both ? (this.app + i) % 2 : this.app].request(
            "POST",
            `/v1/regions/${this.region}/claims`,
            { token: CALLERS[0], body: claimBody(ask), headers: { "idempotency-key": this.key } },
          ),
      ),
    );
    const what = this.toString();
    const first = answers.filter((a) => a.status === 201 && !a.headers.has("idempotent-replayed"));
    const known = m.idem.has(`0 ${this.region} ${this.key}`);
    assert.ok(first.length <= (known ? 0 : 1), `${what}: ${first.length} claims for one key`);
    if (first.length === 1) expectClaim(m, ask, first[0], what);
    else if (!known) {
      // No claim: every answer is as a lone claim finding no capacity (or a 404).
      for (const a of answers) expectClaim(m, ask, a, what);
      return;
    }
    for (const a of answers) {
      if (a === first[0]) continue;
      if (this.both && a.status === 503) continue; // documented across isolates
      expectClaim(m, ask, a, `${what} (retry)`);
    }
  }
  toString() {
    return `KeyedBurst(${this.region}, ${this.n} × ${this.key}, ${
      this.both ? "both apps" : "one app"
    })`;
  }
}

type SecretKind = "good" | "wrong" | "missing";

function secretHeader(c: MClaim, kind: SecretKind): Record<string, string> {
  if (kind === "missing") return {};
  return { "allot-claim-secret": kind === "good" ? c.secret : `${c.secret}x` };
}

/** The documented answer to a renew; updates the model. */
function expectRenew(
  m: Model,
  c: MClaim,
  kind: SecretKind,
  leaseMs: number | undefined,
  res: TestResponse,
  what: string,
): void {
  if (kind !== "good") return expectStatus(res, 403, `${what} (bad secret)`);
  if (c.state !== "active") return expectStatus(res, 409, `${what} (${c.state})`);
  if (c.expiresAt <= m.now) {
    expectStatus(res, 409, `${what} (past its expiry)`);
    m.expire(c); // the refusal records the expiry
    return;
  }
  expectStatus(res, 200, what);
  assertToken(res, what);
  // The asked region's lease settings (whichever pool served it); its own lease if it is gone.
  const maxMs = m.regions.get(c.region)?.maxMs ?? c.leaseMs;
  c.leaseMs = Math.min(leaseMs ?? c.leaseMs, maxMs);
  c.expiresAt = m.now + c.leaseMs;
  assert.deepEqual(
    res.body,
    { ...viewOf(c, m.now), consistencyToken: res.body.consistencyToken },
    `${what}: the renewed claim`,
  );
}

/** The documented answer to a release; updates the model. */
function expectRelease(m: Model, c: MClaim, kind: SecretKind, res: TestResponse, what: string) {
  if (kind !== "good") return expectStatus(res, 403, `${what} (bad secret)`);
  if (c.state === "released") {
    expectStatus(res, 204, `${what} (again)`);
    assert.equal(
      res.headers.get("allot-consistency-token"),
      c.releaseToken,
      `${what}: a release resent answers the release's consistency token`,
    );
    return;
  }
  if (c.state !== "active") return expectStatus(res, 409, `${what} (${c.state})`);
  if (c.expiresAt <= m.now) {
    expectStatus(res, 409, `${what} (past its expiry)`);
    m.expire(c);
    return;
  }
  expectStatus(res, 204, what);
  m.end(c, "released", null);
  c.releaseToken = res.headers.get("allot-consistency-token");
  assert.match(c.releaseToken ?? "", /^[0-9a-f]{20}$/, `${what}: consistency token`);
}

class Renew implements Cmd {
  constructor(
    readonly which: number,
    readonly secret: SecretKind,
    readonly leaseMs: number | undefined,
    readonly app: number,
  ) {}
  check = (m: Readonly<Model>) => m.claims.length > 0;
  async run(m: Model, r: Real) {
    const c = pick(m.claims, this.which);
    const res = await r.apps[this.app].request("POST", `/v1/claims/${c.id}/renew`, {
      token: TOKENS.client,
      body: this.leaseMs === undefined ? {} : { leaseMs: this.leaseMs },
      headers: secretHeader(c, this.secret),
    });
    expectRenew(m, c, this.secret, this.leaseMs, res, `${this} of ${c.id}`);
  }
  toString() {
    return `Renew(#${this.which}, ${this.secret} secret, leaseMs ${this.leaseMs}, app ${this.app})`;
  }
}

class Release implements Cmd {
  constructor(readonly which: number, readonly secret: SecretKind, readonly app: number) {}
  check = (m: Readonly<Model>) => m.claims.length > 0;
  async run(m: Model, r: Real) {
    const c = pick(m.claims, this.which);
    const res = await r.apps[this.app].request("DELETE", `/v1/claims/${c.id}`, {
      token: TOKENS.client,
      headers: secretHeader(c, this.secret),
    });
    expectRelease(m, c, this.secret, res, `${this} of ${c.id}`);
  }
  toString() {
    return `Release(#${this.which}, ${this.secret} secret, app ${this.app})`;
  }
}

/** Renews and releases of distinct claims at once through one instance (group commits). */
class EndBurst implements Cmd {
  constructor(
    readonly ops: Array<{ which: number; renew: boolean; leaseMs?: number }>,
    readonly app: number,
  ) {}
  check = (m: Readonly<Model>) => m.claims.length > 0;
  async run(m: Model, r: Real) {
    const seen = new Set<string>();
    const ops = this.ops.map((op) => ({ ...op, claim: pick(m.claims, op.which) })).filter((op) =>
      !seen.has(op.claim.id) && seen.add(op.claim.id)
    );
    const answers = await Promise.all(
      ops.map(({ claim, renew, leaseMs }, i) =>
        renew
          ? r.apps[(this.app + i) % 2].request("POST", `/v1/claims/${claim.id}/renew`, {
            token: TOKENS.client,
            body: leaseMs === undefined ? {} : { leaseMs },
            headers: secretHeader(claim, "good"),
          })
          : r.apps[(this.app + i) % 2].request("DELETE", `/v1/claims/${claim.id}`, {
            token: TOKENS.client,
            headers: secretHeader(claim, "good"),
          })
      ),
    );
    ops.forEach(({ claim, renew, leaseMs }, i) => {
      const what = `${this}: ${renew ? "renew" : "release"} of ${claim.id}`;
      if (renew) expectRenew(m, claim, "good", leaseMs, answers[i], what);
      else expectRelease(m, claim, "good", answers[i], what);
    });
  }
  toString() {
    return `EndBurst(${JSON.stringify(this.ops)}, app ${this.app})`;
  }
}

/** The documented answer to a revoke; updates the model. */
function expectRevoke(m: Model, c: MClaim, res: TestResponse, what: string): void {
  if (c.state !== "active") return expectStatus(res, 409, `${what} (${c.state})`);
  if (c.expiresAt <= m.now) {
    expectStatus(res, 409, `${what} (past its expiry)`);
    m.expire(c);
    return;
  }
  expectStatus(res, 200, what);
  assertToken(res, what);
  m.end(c, "lost", "revoked: maintenance");
  assert.deepEqual(
    res.body,
    { ...viewOf(c, m.now), consistencyToken: res.body.consistencyToken },
    `${what}: the revoked claim`,
  );
}

class Revoke implements Cmd {
  constructor(readonly which: number, readonly app: number) {}
  check = (m: Readonly<Model>) => m.claims.length > 0;
  async run(m: Model, r: Real) {
    const c = pick(m.claims, this.which);
    const res = await r.apps[this.app].request("POST", `/v1/claims/${c.id}/revoke`, {
      token: TOKENS.admin,
      body: { reason: "maintenance" },
    });
    expectRevoke(m, c, res, `${this} of ${c.id}`);
  }
  toString() {
    return `Revoke(#${this.which}, app ${this.app})`;
  }
}

type ClaimOp = "renew" | "release" | "revoke";

function sendOp(t: TestApp, c: MClaim, op: ClaimOp): Promise<TestResponse> {
  if (op === "renew") {
    return t.request("POST", `/v1/claims/${c.id}/renew`, {
      token: TOKENS.client,
      body: {},
      headers: secretHeader(c, "good"),
    });
  }
  if (op === "release") {
    return t.request("DELETE", `/v1/claims/${c.id}`, {
      token: TOKENS.client,
      headers: secretHeader(c, "good"),
    });
  }
  return t.request("POST", `/v1/claims/${c.id}/revoke`, {
    token: TOKENS.admin,
    body: { reason: "maintenance" },
  });
}

function expectOp(m: Model, c: MClaim, op: ClaimOp, res: TestResponse, what: string): void {
  if (op === "renew") expectRenew(m, c, "good", undefined, res, what);
  else if (op === "release") expectRelease(m, c, "good", res, what);
  else expectRevoke(m, c, res, what);
}

/**
 * Two operations on one claim at once, through the two instances: the answers are those of
 * one order or the other, never a mix (a lease ends once; a renew never revives an ended one).
 */
class RaceOnClaim implements Cmd {
  constructor(readonly which: number, readonly ops: [ClaimOp, ClaimOp]) {}
  check = (m: Readonly<Model>) => m.claims.length > 0;
  async run(m: Model, r: Real) {
    const c = pick(m.claims, this.which);
    const [a, b] = this.ops;
    const [ra, rb] = await Promise.all([sendOp(r.apps[0], c, a), sendOp(r.apps[1], c, b)]);
    const what = `${this} of ${c.id}`;
    const attempt = (first: [ClaimOp, TestResponse], second: [ClaimOp, TestResponse]) => {
      const copy = { ...c };
      expectOp(m, copy, first[0], first[1], `${what}: ${first[0]} first`);
      expectOp(m, copy, second[0], second[1], `${what}: then ${second[0]}`);
      return copy;
    };
    let after: MClaim;
    try {
      after = attempt([a, ra], [b, rb]);
    } catch (error) {
      try {
        after = attempt([b, rb], [a, ra]);
      } catch {
        throw error;
      }
    }
    Object.assign(c, after);
  }
  toString() {
    return `RaceOnClaim(#${this.which}, ${this.ops})`;
  }
}

class GetClaim implements Cmd {
  constructor(readonly which: number, readonly unknown: boolean, readonly app: number) {}
  check = (m: Readonly<Model>) => this.unknown || m.claims.length > 0;
  async run(m: Model, r: Real) {
    if (this.unknown) {
      const res = await r.apps[this.app].request(
        "GET",
        "/v1/claims/iad.01ARZ3NDEKTSV4RRFFQ69G5FAV",
        { token: TOKENS.client },
      );
      return expectStatus(res, 404, this.toString());
    }
    const c = pick(m.claims, this.which);
    const res = await r.apps[this.app].request("GET", `/v1/claims/${c.id}`, {
      token: TOKENS.client,
    });
    expectStatus(res, 200, this.toString());
    assert.deepEqual(res.body, viewOf(c, m.now), `${this}: the claim of ${c.id}`);
  }
  toString() {
    return `GetClaim(${this.unknown ? "unknown" : `#${this.which}`}, app ${this.app})`;
  }
}

class ListClaims implements Cmd {
  constructor(
    readonly region: string,
    readonly state: ClaimState | undefined,
    readonly holder: string | undefined,
    readonly app: number,
  ) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const query = new URLSearchParams({ limit: "2" });
    if (this.state) query.set("state", this.state);
    if (this.holder) query.set("holder", this.holder);
    const path = `/v1/regions/${this.region}/claims?${query}`;
    if (!m.regions.has(this.region)) {
      const res = await r.apps[this.app].request("GET", path, { token: TOKENS.client });
      return expectStatus(res, 404, this.toString());
    }
    const { items } = await listPages(r.apps[this.app], path, TOKENS.client);
    let want = m.claims.filter((c) =>
      c.servedBy === this.region &&
      (this.state === undefined || stateNow(c, m.now) === this.state) &&
      (this.holder === undefined || c.holder === this.holder)
    );
    want = this.state === "active"
      ? want.sort((a, b) => a.expiresAt - b.expiresAt || (a.id < b.id ? -1 : 1))
      : want.sort((a, b) => (a.id < b.id ? -1 : 1));
    assert.deepEqual(items, want.map((c) => viewOf(c, m.now)), this.toString());
  }
  toString() {
    return `ListClaims(${this.region}, state ${this.state}, holder ${this.holder})`;
  }
}

class Advance implements Cmd {
  constructor(readonly ms: number) {}
  check = () => true;
  run(m: Model, r: Real) {
    r.clock.advance(this.ms);
    m.now += this.ms;
    return Promise.resolve();
  }
  toString() {
    return `Advance(${this.ms})`;
  }
}

/**
 * An agent's status batch for some resources, known or not (a first report registers one):
 * a state each, sometimes slots, labels or load.
 */
class ReportStatus implements Cmd {
  constructor(
    readonly region: string,
    readonly updates: Array<Omit<MUpdate, "seq">>,
    readonly app: number,
  ) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const seen = new Set<string>();
    const updates: MUpdate[] = this.updates.filter((u) =>
      !seen.has(u.resource) && seen.add(u.resource)
    ).map((u) => {
      const key = `${this.region}/${u.resource}`;
      const seq = (m.seqs.get(key) ?? 0) + 1; // agents count upwards, across re-registrations
      m.seqs.set(key, seq);
      return { ...u, seq };
    });
    r.enqueued.splice(0);
    const res = await r.apps[this.app].request("POST", `/v1/regions/${this.region}/status`, {
      token: TOKENS.agent,
      body: { updates },
    });
    if (!m.regions.has(this.region)) return expectStatus(res, 404, this.toString());
    expectStatus(res, 202, this.toString());
    assert.deepEqual([res.body.accepted, res.body.messages], [updates.length, 1]);
    const messages = r.enqueued.splice(0).filter((message) =>
      (message as { type: string }).type === "status.batch"
    ) as StatusBatchMessage[];
    assert.equal(messages.length, 1, `${this}: one queue message`);
    m.pending.push({
      region: this.region,
      at: m.now,
      order: ++m.ops,
      updates,
      message: messages[0],
    });
  }
  toString() {
    return `ReportStatus(${this.region}, ${JSON.stringify(this.updates)})`;
  }
}

/**
 * The queue consumer applies some of a region's waiting status messages, in any order
 * across applies (a redelivery after a failed apply comes late): one apply, one commit.
 */
class ApplyStatus implements Cmd {
  constructor(readonly region: string, readonly picks: number[]) {}
  check = (m: Readonly<Model>) => m.pendingOf(this.region).length > 0;
  async run(m: Model, r: Real) {
    const waiting = m.pendingOf(this.region);
    const chosen = [...new Set(this.picks.map((i) => pick(waiting, i)))];
    const outcomes = await new StatusApplier(r.apps[0].kv, r.clock).apply(
      chosen.map((p) => p.message),
    );
    assert.deepEqual(outcomes, chosen.map(() => null), `${this}: every message committed`);
    // The applier takes them in acceptance order. Per resource, the reports that apply: one
    // accepted before the resource's last DELETE never does, also once registered again.
    const batch = [...chosen].sort((x, y) => x.at - y.at);
    const byResource = new Map<string, Array<MUpdate & { order: number }>>();
    for (const p of batch) {
      for (const u of p.updates) {
        if (p.order < (m.deleted.get(`${p.region}/${u.resource}`) ?? 0)) continue;
        byResource.set(u.resource, [...(byResource.get(u.resource) ?? []), {
          ...u,
          order: p.order,
        }]);
      }
      m.pending.splice(m.pending.indexOf(p), 1);
    }
    for (const [id, updates] of byResource) applyReports(m, this.region, id, updates);
    m.evaluate(this.region); // every apply evaluates its region's mode
  }
  toString() {
    return `ApplyStatus(${this.region}, ${JSON.stringify(this.picks)})`;
  }
}

/**
 * One resource's reports applied in one commit, as the README says: each field takes the
 * value of the highest-seq report carrying it, if newer than its current value's; a `gone`
 * newer than any that lost leases loses them: every live lease while the resource stays gone,
 * else (reported back, in this commit or before) the leases taken before it was accepted.
 */
function applyReports(
  m: Model,
  region: string,
  id: string,
  updates: Array<MUpdate & { order: number }>,
): void {
  const key = `${region}/${id}`;
  const applied = m.applied.get(key) ?? 0;
  const pool = m.resourcesOf(region);
  const before = pool.get(id);
  const spec: MResource = before ? { ...before, fieldSeq: { ...before.fieldSeq } } : {
    slots: 1,
    labels: {},
    state: "ready",
    updatedAt: m.now,
    ...putSeqs(undefined, applied),
  };
  const newest = (field: "state" | "slots" | "labels" | "load") => {
    let best: (MUpdate & { order: number }) | undefined;
    for (const u of updates) {
      if (u[field] === undefined || u.seq <= spec.fieldSeq[field]) continue;
      if (best === undefined || u.seq > best.seq) best = u;
    }
    return best;
  };
  const state = newest("state");
  const slots = newest("slots");
  const labels = newest("labels");
  const load = newest("load");
  const goneSeq = spec.stateAcceptedAt === undefined ? spec.fieldSeq.state : spec.goneSeq;
  const gones = updates.filter((u) => u.state === "gone" && u.seq > goneSeq);
  const used = new Set([state, slots, labels, load, ...gones].filter((u) => u !== undefined));
  if (used.size === 0) return;
  if (state) {
    [spec.state, spec.fieldSeq.state, spec.stateAcceptedAt] = [state.state, state.seq, state.order];
  }
  if (slots) [spec.slots, spec.fieldSeq.slots] = [slots.slots!, slots.seq];
  if (labels) [spec.labels, spec.fieldSeq.labels] = [labels.labels!, labels.seq];
  if (load) [spec.load, spec.fieldSeq.load] = [load.load!, load.seq];
  spec.goneSeq = Math.max(goneSeq, ...gones.map((u) => u.seq));
  spec.updatedAt = m.now;
  m.applied.set(key, Math.max(applied, ...[...used].map((u) => u!.seq)));
  pool.set(id, spec);
  if (before === undefined || gones.length === 0) return;
  const gone = gones.reduce((a, b) => (b.seq > a.seq ? b : a));
  const cut = spec.state === "gone" ? Infinity : Math.min(gone.order, spec.stateAcceptedAt!);
  for (const c of m.heldOn(region, id)) {
    if (c.order > cut) continue;
    if (c.expiresAt <= m.now) m.expire(c);
    else m.end(c, "lost", "resource gone");
  }
}

/**
 * An instance reported gone, claims taken meanwhile, then reported back, before the consumer
 * applies either: the cut between the leases the `gone` loses and those it spares.
 */
class GoneThenBack implements Cmd {
  constructor(readonly region: string, readonly id: string, readonly claims: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    await new ReportStatus(this.region, [{ resource: this.id, state: "gone" }], 0).run(m, r);
    for (let i = 0; i < this.claims; i++) {
      await new Claim({ region: this.region, caller: 0, holder: "h1" }, i % 2).run(m, r);
    }
    await new ReportStatus(this.region, [{ resource: this.id, state: "ready" }], 1).run(m, r);
  }
  toString() {
    return `GoneThenBack(${this.region}/${this.id}, ${this.claims} claims between)`;
  }
}

/** Delivers the region's current sweep tick, as the queue would. */
class Sweep implements Cmd {
  constructor(readonly region: string) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const t = r.apps[0];
    const { state, beat } = await readSweeper(t.kv, this.region);
    const holds = m.claims.some((c) => c.held && c.servedBy === this.region);
    if (holds) {
      assert.ok(state.value, `${this}: ${this.region} holds leases but has no sweep chain`);
    }
    if (!state.value || !beat.value) return;
    await handleQueueMessage(leaseQueueDeps(t), {
      type: "lease.sweep",
      region: this.region,
      chain: state.value.chain,
      tick: beat.value.tick,
    });
    if (beat.value.chain === state.value.chain) m.sweep(this.region);
  }
  toString() {
    return `Sweep(${this.region})`;
  }
}

// ---------------------------------------------------------------------------------------
// Arbitraries

const app = fc.constantFrom(0, 1);
const knownRegion = fc.constantFrom(...REGIONS);
const anyRegion = fc.oneof(
  { weight: 9, arbitrary: knownRegion },
  { weight: 1, arbitrary: fc.constant(MISSING_REGION) },
);
const which = fc.nat(1000);

const putRegion = fc.tuple(
  knownRegion,
  fc.constantFrom(...DEFAULT_MS),
  fc.constantFrom(...MAX_MS),
  fc.constantFrom<string | null>(null, ...REGIONS, MISSING_REGION),
  fc.constantFrom({ enterMs: 2000, exitMs: 500 }, { enterMs: 1000, exitMs: 200 }),
  app,
).map(([region, d, max, backup, lag, a]) => new PutRegion(region, d, max, backup, lag, a));
const putResource = fc.tuple(
  anyRegion,
  fc.constantFrom(...RESOURCE_IDS),
  fc.integer({ min: 1, max: 3 }),
  fc.constantFrom(...RESOURCE_LABELS),
  fc.constantFrom<ResourceState>("ready", "ready", "ready", "draining", "gone"),
  app,
).map(([region, id, slots, labels, state, a]) =>
  new PutResource(region, id, slots, labels, state, a)
);
const deleteResource = fc.tuple(anyRegion, fc.constantFrom(...RESOURCE_IDS), app).map((
  [region, id, a],
) => new DeleteResource(region, id, a));
const getResource = fc.tuple(anyRegion, fc.constantFrom(...RESOURCE_IDS), app).map((
  [region, id, a],
) => new GetResource(region, id, a));
const claimCmd = fc.tuple(
  anyRegion,
  fc.constantFrom(0, 1),
  fc.constantFrom("h1", "h2"),
  fc.constantFrom(...ASKED_MS),
  fc.constantFrom(...WANTED_LABELS),
  fc.constantFrom(undefined, undefined, "k1", "k2"),
  app,
).map(([region, caller, holder, leaseMs, labels, key, a]) => {
  const ask: ClaimAsk = { region, caller, holder };
  if (leaseMs !== undefined) ask.leaseMs = leaseMs;
  if (labels !== undefined) ask.labels = labels;
  if (key !== undefined) ask.key = key;
  return new Claim(ask, a);
});
const replayClaim = fc.tuple(which, app).map(([w, a]) => new ReplayClaim(w, a));
const claimBurst = fc.tuple(knownRegion, fc.integer({ min: 2, max: 6 }), app).map((
  [region, k, a],
) => new ClaimBurst(region, k, a));
const keyedBurst = fc.tuple(
  anyRegion,
  fc.integer({ min: 2, max: 4 }),
  fc.constantFrom("kb1", "kb2"),
  fc.boolean(),
  app,
).map(([region, n, key, both, a]) => new KeyedBurst(region, n, key, both, a));
const switchBurst = fc.tuple(knownRegion, fc.integer({ min: 2, max: 6 }), app).map((
  [region, k, a],
) => new SwitchBurst(region, k, a));
const mixedBurst = fc.tuple(
  knownRegion,
  fc.array(which, { minLength: 1, maxLength: 3 }),
  fc.integer({ min: 1, max: 5 }),
  app,
).map(([region, releases, k, a]) => new MixedBurst(region, releases, k, a));
const renewCmd = fc.tuple(
  which,
  fc.constantFrom<SecretKind>("good", "good", "good", "wrong", "missing"),
  fc.constantFrom(...ASKED_MS),
  app,
).map(([w, s, ms, a]) => new Renew(w, s, ms, a));
const releaseCmd = fc.tuple(
  which,
  fc.constantFrom<SecretKind>("good", "good", "good", "wrong"),
  app,
).map(([w, s, a]) => new Release(w, s, a));
const endBurst = fc.tuple(
  fc.array(
    fc.record({ which, renew: fc.boolean(), leaseMs: fc.constantFrom(...ASKED_MS) }, {
      requiredKeys: ["which", "renew"],
    }),
    { minLength: 2, maxLength: 5 },
  ),
  app,
).map(([ops, a]) => new EndBurst(ops, a));
const revoke = fc.tuple(which, app).map(([w, a]) => new Revoke(w, a));
const claimOp = fc.constantFrom<ClaimOp>("renew", "release", "revoke");
const raceOnClaim = fc.tuple(which, claimOp, claimOp).map(([w, a, b]) =>
  new RaceOnClaim(w, [a, b])
);
const getClaim = fc.tuple(which, fc.boolean(), app).map(([w, u, a]) => new GetClaim(w, u, a));
const listClaims = fc.tuple(
  anyRegion,
  fc.constantFrom<ClaimState | undefined>(undefined, "active", "released", "expired", "lost"),
  fc.constantFrom(undefined, "h1", "h2"),
  app,
).map(([region, state, holder, a]) => new ListClaims(region, state, holder, a));
const deleteRegion = fc.tuple(knownRegion, fc.boolean(), app).map(([region, clear, a]) =>
  new DeleteRegion(region, clear, a)
);
const statusUpdate = fc.record({
  resource: fc.constantFrom(...RESOURCE_IDS),
  state: fc.constantFrom<ResourceState>("ready", "ready", "draining", "gone"),
  slots: fc.integer({ min: 1, max: 3 }),
  labels: fc.constantFrom(...RESOURCE_LABELS),
  load: fc.constantFrom(0, 0.5),
}, { requiredKeys: ["resource", "state"] });
const reportStatus = fc.tuple(
  anyRegion,
  fc.array(statusUpdate, { minLength: 1, maxLength: 3 }),
  app,
).map(([region, updates, a]) => new ReportStatus(region, updates, a));
const goneThenBack = fc.tuple(
  knownRegion,
  fc.constantFrom(...RESOURCE_IDS),
  fc.integer({ min: 1, max: 3 }),
).map(([region, id, n]) => new GoneThenBack(region, id, n));
const applyStatus = fc.tuple(
  knownRegion,
  fc.oneof(
    fc.constant<number[]>([0]),
    fc.constant<number[]>([0, 1, 2]),
    fc.array(which, { minLength: 1, maxLength: 3 }),
  ),
).map(([region, picks]) => new ApplyStatus(region, picks));
const advance = fc.constantFrom(...ADVANCE_MS).map((ms) => new Advance(ms));
const sweep = knownRegion.map((region) => new Sweep(region));

type Weighted = Array<[fc.Arbitrary<Cmd>, number]>;

/** Each command arbitrary, repeated by its weight (fc.commands picks among them uniformly). */
const weighted = (list: Weighted): fc.Arbitrary<Cmd>[] =>
  list.flatMap(([arb, weight]) => Array(weight).fill(arb));

/** One request at a time: configuration, resources, claims and their lifecycle, the clock. */
const SEQUENTIAL: Weighted = [
  [putRegion, 1],
  [deleteRegion, 1],
  [putResource, 3],
  [deleteResource, 1],
  [getResource, 1],
  [claimCmd, 5],
  [replayClaim, 1],
  [renewCmd, 2],
  [releaseCmd, 2],
  [revoke, 1],
  [getClaim, 1],
  [listClaims, 1],
  [advance, 3],
  [sweep, 2],
];
/** Status reports (queued, applied late and out of order), their lag and the fallback it causes. */
const STATUS: Weighted = [[reportStatus, 3], [goneThenBack, 1], [applyStatus, 3]];
/** Requests racing each other through the two instances (group commits, CAS retries). */
const RACES: Weighted = [
  [claimBurst, 1],
  [mixedBurst, 1],
  [switchBurst, 2],
  [keyedBurst, 1],
  [endBurst, 1],
  [raceOnClaim, 2],
];

/** Runs random command sequences against a fresh pair of apps and a fresh model, each seeded. */
async function modelRuns(commands: fc.Arbitrary<Cmd>[], seed: number): Promise<void> {
  await fc.assert(
    fc.asyncProperty(
      fc.commands(commands, { maxCommands: MAX_COMMANDS, size: "max" }),
      fc.integer(),
      async (cmds, randomSeed) => {
        // The app picks free slots from a random point: seeded, so a run replays.
        Math.random = seededRandom(randomSeed);
        const inner = await Deno.openKv(":memory:");
        await using _store = { [Symbol.asyncDispose]: () => Promise.resolve(inner.close()) };
        const recorder = recordEnqueues(inner);
        await using a = await makeApp({ kv: recorder.kv });
        await using b = await makeApp({ kv: recorder.kv, clock: a.clock });
        const real: Real = { apps: [a, b], clock: a.clock, enqueued: recorder.enqueued };
        const model = new Model();
        // A seeded start, so short sequences already have pools to work on.
        const start = [
          new PutRegion("fra", 4000, 8000, null, LAG, 0),
          new PutRegion("iad", 4000, 8000, "fra", LAG, 0),
          new PutResource("iad", "r1", 2, { browser: "chromium" }, "ready", 0),
          new PutResource("iad", "r2", 1, {}, "ready", 0),
          new PutResource("iad", "r10", 3, { browser: "chromium", gpu: "yes" }, "ready", 0),
          new PutResource("fra", "r1.a", 1, { browser: "firefox" }, "ready", 0),
          new PutResource("fra", "r2", 2, {}, "ready", 0),
        ];
        for (const cmd of start) await cmd.run(model, real);
        // Every command is followed by a comparison of everything observable.
        const checked = [...cmds].flatMap((cmd) => [cmd, new CheckAll()]);
        await fc.asyncModelRun(() => ({ model, real }), checked);
      },
    ),
    { seed, numRuns: RUNS },
  );
}

Deno.test("allot matches its documented model under random command sequences", async (t) => {
  const realRandom = Math.random;
  try {
    await t.step(
      "claims, renews, releases, revokes, expiry and resource changes: every answer and read as documented",
      () => modelRuns(weighted(SEQUENTIAL), SEED),
    );
    await t.step(
      "with status reports applied late and out of order: resources, lag, mode and fallback routing as documented",
      () => modelRuns(weighted([...SEQUENTIAL, ...STATUS]), SEED + 1),
    );
    await t.step(
      "with requests racing through two instances: no slot granted twice, one claim per key, one outcome per order",
      () => modelRuns(weighted([...SEQUENTIAL, ...STATUS, ...RACES]), SEED + 2),
    );
  } finally {
    Math.random = realRandom;
  }
});

/** Not generated: interleaved after every command. */
class CheckAll implements Cmd {
  check = () => true;
  run(m: Model, r: Real) {
    return checkAll(m, r);
  }
  toString() {
    return "CheckAll";
  }
}
