/**
 * Primary/fallback mode per region, with hysteresis. A region enters `fallback`
 * when its lag passes lag.enterMs and its backup is healthy (primary itself, under
 * its own enterMs, with free slots); it returns to `primary` only when its lag falls
 * below lag.exitMs. The mode is stored in KV (shared by every isolate) and changed
 * with a checked commit, so concurrent evaluations agree on one history.
 */
import type { Clock } from "./clock.ts";
import { keys } from "./keys.ts";
import { type Lag, lagCounterKeys, lagFrom, oldestPending, readLag } from "./lag.ts";
import { log } from "./log.ts";
import { getRegionConfig, poolCounts, regionNotFound } from "./regions.ts";
import { observeRegion } from "./telemetry.ts";
import { soonestLeaseExpiry } from "./leases.ts";
import type { RegionConfig, RegionMode } from "./schemas.ts";

/** How many mode changes a region remembers. */
export const MODE_HISTORY = 20;

/** One mode change. */
export interface ModeChange {
  at: number;
  from: RegionMode;
  to: RegionMode;
  reason: string;
  lagMs: number;
}

/** A region's stored mode. */
export interface ModeRecord {
  mode: RegionMode;
  since: number;
  reason: string;
  history: ModeChange[];
  /** The backup a fallback serves from, as of the change (absent in older records). */
  backup?: string | null;
}

/** The outcome of one evaluation: the region's mode after it, and the figures it used. */
export interface ModeEvaluation {
  config: RegionConfig;
  mode: ModeRecord;
  lag: Lag;
}

/** The mode of a region no evaluation has changed yet. */
export const initialMode = (config: RegionConfig): ModeRecord => ({
  mode: "primary",
  since: config.createdAt ?? config.updatedAt,
  reason: "created",
  history: [],
});

/** Whether a backup can take a region's claims now, and its lag. */
export interface BackupHealth {
  refusal: { kind: "missing" | "fallback" | "lagging" | "exhausted"; reason: string } | null;
  lag: Lag | null;
}

/** Checks a backup region: it must exist, be primary, lag under its enterMs, and have a free slot. */
export async function backupHealth(
  kv: Deno.Kv,
  clock: Clock,
  backup: string,
): Promise<BackupHealth> {
  const [config, mode] = await kv.getMany<[RegionConfig, ModeRecord]>([
    keys.regionConfig(backup),
    keys.mode(backup),
  ]);
  if (config.value === null) {
    return { refusal: { kind: "missing", reason: `backup "${backup}" does not exist` }, lag: null };
  }
  const lag = await readLag(kv, clock, backup);
  if (mode.value?.mode === "fallback") {
    return {
      refusal: { kind: "fallback", reason: `backup "${backup}" is itself in fallback` },
      lag,
    };
  }
  if (lag.lagMs > config.value.lag.enterMs) {
    return { refusal: { kind: "lagging", reason: `backup "${backup}" lags ${lag.lagMs}ms` }, lag };
  }
  if ((await poolCounts(kv, backup)).free <= 0) {
    return { refusal: { kind: "exhausted", reason: `backup "${backup}" has no free slot` }, lag };
  }
  return { refusal: null, lag };
}

/**
 * Evaluates a region's mode from its current lag and changes it if the thresholds
 * say so. Idempotent: evaluating twice at the same lag changes nothing.
 */
export async function evaluateMode(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
): Promise<ModeEvaluation> {
  for (let attempt = 0; attempt < 5; attempt++) {
    // One getMany and one list: this runs once per claim group, on the hot path.
    const [[configEntry, modeEntry, ...counters], { oldest, retired }] = await Promise.all([
      kv.getMany([keys.regionConfig(region), keys.mode(region), ...lagCounterKeys(region)]),
      oldestPending(kv, region),
    ]);
    if (configEntry.versionstamp === null) {
      throw regionNotFound(region);
    }
    const config = configEntry.value as RegionConfig;
    const lag = retired ? await readLag(kv, clock, region) : lagFrom(clock, counters, oldest);
    const current = (modeEntry.value as ModeRecord | null) ?? initialMode(config);
    const change = await nextMode(kv, clock, config, current, lag);
    if (change === null) {
      observeRegion(region, lag.lagMs, current.mode, lag.deadLettered);
      return { config, mode: current, lag };
    }
    const now = clock.now();
    const next: ModeRecord = {
      mode: change.to,
      since: now,
      reason: change.reason,
      backup: config.backup,
      history: [
        ...current.history,
        { at: now, from: current.mode, to: change.to, reason: change.reason, lagMs: lag.lagMs },
      ].slice(-MODE_HISTORY),
    };
    const res = await kv.atomic().check(modeEntry).check(configEntry).set(keys.mode(region), next)
      .commit();
    if (res.ok) {
      log("info", "region mode changed", {
        region,
        from: current.mode,
        to: next.mode,
        reason: next.reason,
        lagMs: lag.lagMs,
      });
      observeRegion(region, lag.lagMs, next.mode, lag.deadLettered);
      return { config, mode: next, lag };
    }
  }
  const config = (await getRegionConfig(kv, region)).value;
  const mode = (await kv.get<ModeRecord>(keys.mode(region))).value ?? initialMode(config);
  return { config, mode, lag: await readLag(kv, clock, region) };
}

async function nextMode(
  kv: Deno.Kv,
  clock: Clock,
  config: RegionConfig,
  current: ModeRecord,
  lag: Lag,
): Promise<{ to: RegionMode; reason: string } | null> {
  if (current.mode === "primary") {
    if (lag.lagMs <= config.lag.enterMs || config.backup === null) return null;
    if ((await backupHealth(kv, clock, config.backup)).refusal !== null) return null;
    return {
      to: "fallback",
      reason:
        `lag ${lag.lagMs}ms > enterMs ${config.lag.enterMs}ms: claims served by "${config.backup}"`,
    };
  }
  if (config.backup === null) return { to: "primary", reason: "backup removed" };
  if (lag.lagMs < config.lag.exitMs) {
    return { to: "primary", reason: `lag ${lag.lagMs}ms < exitMs ${config.lag.exitMs}ms` };
  }
  if (current.backup !== undefined && current.backup !== config.backup) {
    return { to: "fallback", reason: `backup now "${config.backup}": claims served by it` };
  }
  return null;
}

/** Whether one of the region's leases has run out with its expiry not yet recorded. */
async function hasOverdueLease(kv: Deno.Kv, clock: Clock, region: string): Promise<boolean> {
  const soonest = await soonestLeaseExpiry(kv, region);
  return soonest !== null && soonest <= clock.now();
}

/** Where a new claim for a region is served, and how stale that pool may be. */
export interface ClaimRoute {
  config: RegionConfig;
  mode: RegionMode;
  servedBy: string;
  /** Lag of the serving region when routed. */
  lagMs: number;
  /** Lag of the region asked for: what a claim its own pool serves instead reports. */
  ownLagMs: number;
  /** Set when the region is in fallback but its backup could not take the claim. */
  note: string | null;
}

/**
 * Routes a claim: the region's own pool in `primary`; the backup's in `fallback`. When
 * the backup cannot take it right now (lagging, exhausted, in fallback itself) while
 * the region is in fallback, or lags past enterMs in primary (the refusal that kept it
 * there), the less stale of the two serves and the route says why.
 */
export async function routeClaim(kv: Deno.Kv, clock: Clock, region: string): Promise<ClaimRoute> {
  const { config, mode, lag } = await evaluateMode(kv, clock, region);
  const primary = mode.mode === "primary";
  if (config.backup === null || (primary && lag.lagMs <= config.lag.enterMs)) {
    return {
      config,
      mode: mode.mode,
      servedBy: region,
      lagMs: lag.lagMs,
      ownLagMs: lag.lagMs,
      note: null,
    };
  }
  const backup = await backupHealth(kv, clock, config.backup);
  if (primary && backup.refusal === null) {
    // The backup became healthy since the evaluation (or its mode change lost a race):
    // the next evaluation switches; this claim keeps to the stored mode.
    return {
      config,
      mode: "primary",
      servedBy: region,
      lagMs: lag.lagMs,
      ownLagMs: lag.lagMs,
      note: null,
    };
  }
  // In fallback, a backup whose slots are all held, one of whose leases has run out (its
  // sweep may be late behind the same queue), still takes the claim: allocateFrom sweeps it
  // first, and hands the claim back to the region's own pool if that freed nothing it can
  // take. Entering fallback still wants a free slot (nextMode).
  if (
    backup.refusal === null ||
    (!primary && backup.refusal.kind === "exhausted" &&
      await hasOverdueLease(kv, clock, config.backup))
  ) {
    return {
      config,
      mode: "fallback",
      servedBy: config.backup,
      lagMs: backup.lag!.lagMs,
      ownLagMs: lag.lagMs,
      note: null,
    };
  }
  const backupIsFresher =
    (backup.refusal.kind === "lagging" || backup.refusal.kind === "fallback") &&
    backup.lag!.lagMs < lag.lagMs;
  return {
    config,
    mode: mode.mode,
    servedBy: backupIsFresher ? config.backup : region,
    lagMs: backupIsFresher ? backup.lag!.lagMs : lag.lagMs,
    ownLagMs: lag.lagMs,
    note: `fallback refused (${backup.refusal.reason}); served by the least stale region`,
  };
}
