/** Region configuration and pool health. */
import type { Clock } from "./clock.ts";
import { NotFoundError, UnavailableError, ValidationError } from "./errors.ts";
import { evaluateMode } from "./fallback.ts";
import { keys } from "./keys.ts";
import { counterValue, getAll, kvCursorOf, listPage, markWrite, pageCursor } from "./kv.ts";
import type { RegionConfig, RegionInput, RegionView } from "./schemas.ts";

/** Pool figures of a region. */
export interface PoolCounts {
  total: number;
  free: number;
  claimed: number;
}

/** Reads a region's configuration, or 404. */
export async function getRegionConfig(
  kv: Deno.Kv,
  region: string,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<Deno.KvEntry<RegionConfig>> {
  const entry = await kv.get<RegionConfig>(keys.regionConfig(region), { consistency });
  if (entry.versionstamp === null) throw new NotFoundError(`Region "${region}" does not exist`);
  return entry;
}

/**
 * Creates or replaces a region's configuration. The backup must be another existing
 * region; the commit checks both entries it read, so a concurrent change cannot slip by.
 */
export async function putRegion(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  input: RegionInput,
): Promise<{ config: RegionConfig; created: boolean; consistencyToken: string }> {
  if (input.backup === region) {
    throw new ValidationError(`Cannot configure region "${region}": it cannot be its own backup`, [
      { field: "backup", message: "must name another region" },
    ]);
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    const current = await kv.get<RegionConfig>(keys.regionConfig(region));
    const op = kv.atomic().check(current);
    if (input.backup !== null) {
      const backup = await kv.get<RegionConfig>(keys.regionConfig(input.backup));
      if (backup.versionstamp === null) {
        throw new ValidationError(
          `Cannot configure region "${region}": backup region "${input.backup}" does not exist`,
          [{ field: "backup", message: `region "${input.backup}" does not exist` }],
        );
      }
      op.check(backup);
    }
    const now = clock.now();
    // A configuration stored before createdAt existed: its last update is the date its
    // mode has shown, and stays so.
    const createdAt = current.value === null
      ? now
      : current.value.createdAt ?? current.value.updatedAt;
    const config: RegionConfig = { name: region, ...input, updatedAt: now, createdAt };
    op.set(keys.regionConfig(region), config);
    markWrite(op, region);
    const res = await op.commit();
    if (res.ok) {
      return { config, created: current.versionstamp === null, consistencyToken: res.versionstamp };
    }
  }
  throw new UnavailableError(`Cannot configure region "${region}": too many concurrent changes`);
}

/** Every region's name, in order, read from the store page by page (never all at once). */
export async function* regionNames(kv: Deno.Kv): AsyncGenerator<string> {
  for await (const entry of kv.list<RegionConfig>({ prefix: keys.regionConfigs() })) {
    yield entry.value.name;
  }
}

/** Pool counters of a region (maintained by every claim, release and resource change). */
export async function poolCounts(
  kv: Deno.Kv,
  region: string,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<PoolCounts> {
  const [slots, free, held] = await kv.getMany([
    keys.counter(region, "slots"),
    keys.counter(region, "free"),
    keys.counter(region, "held"),
  ], { consistency });
  return { total: counterValue(slots), free: counterValue(free), claimed: counterValue(held) };
}

/** A region's configuration with its live health figures (evaluating its mode on the way). */
export async function describeRegion(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
): Promise<RegionView> {
  const { config, mode, lag } = await evaluateMode(kv, clock, region);
  const counts = await poolCounts(kv, region);
  const iso = (ms: number) => new Date(ms).toISOString();
  return {
    name: config.name,
    backup: config.backup,
    lag: config.lag,
    lease: config.lease,
    updatedAt: iso(config.updatedAt),
    mode: mode.mode,
    modeSince: iso(mode.since),
    modeReason: mode.reason,
    modeHistory: mode.history.map((change) => ({ ...change, at: iso(change.at) })),
    lagMs: lag.lagMs,
    pending: lag.pending,
    deadLettered: lag.deadLettered,
    ...counts,
  };
}

/**
 * A page of regions in name order, each with its health (describeRegion): every region, or
 * (`visible`, a region-scoped token's) only those of these that exist.
 */
export async function listRegions(
  kv: Deno.Kv,
  clock: Clock,
  page: { cursor?: string; limit: number },
  visible: ReadonlySet<string> | null,
): Promise<{ items: RegionView[]; cursor: string | null }> {
  const { names, cursor } = visible === null
    ? await pageOfAllRegions(kv, page)
    : await pageOfVisibleRegions(kv, page, visible);
  return { items: await Promise.all(names.map((name) => describeRegion(kv, clock, name))), cursor };
}

async function pageOfAllRegions(kv: Deno.Kv, page: { cursor?: string; limit: number }) {
  const listing = await listPage<RegionConfig>(kv, keys.regionConfigs(), "regions", page);
  return { names: listing.entries.map((entry) => entry.value.name), cursor: listing.cursor };
}

/**
 * The page of the existing regions among `visible`, read by name. Paging the whole prefix
 * and filtering would hand a scoped token cursors that name regions it may not see.
 */
async function pageOfVisibleRegions(
  kv: Deno.Kv,
  page: { cursor?: string; limit: number },
  visible: ReadonlySet<string>,
) {
  const listing = "regions/visible";
  const after = kvCursorOf(listing, page.cursor) ?? "";
  const wanted = [...visible].filter((name) => name > after).sort();
  const configs = await getAll<RegionConfig>(kv, wanted.map((name) => keys.regionConfig(name)));
  const existing = wanted.filter((_, i) => configs[i].versionstamp !== null);
  const names = existing.slice(0, page.limit);
  const more = existing.length > names.length;
  return { names, cursor: more ? pageCursor(listing, names[names.length - 1]) : null };
}
