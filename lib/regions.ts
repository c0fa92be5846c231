/** Region configuration and pool health. */
import type { Clock } from "./clock.ts";
import { InUseError, NotFoundError, UnavailableError, ValidationError } from "./errors.ts";
import { evaluateMode, initialMode, type ModeRecord } from "./fallback.ts";
import { type Lag, oldestPending } from "./lag.ts";
import { keys } from "./keys.ts";
import {
  anyUnder,
  bumpResourcesVersion,
  counterValue,
  getAll,
  kvCursorOf,
  listPage,
  markWrite,
  pageCursor,
} from "./kv.ts";
import type { RegionConfig, RegionInput, RegionView } from "./schemas.ts";
import { forgetRegion } from "./telemetry.ts";

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
  if (entry.versionstamp === null) throw regionNotFound(region);
  return entry;
}

/**
 * The 404 of a region found missing. It may have been deleted by another process: this one
 * stops exporting its gauges too.
 */
export function regionNotFound(region: string): NotFoundError {
  forgetRegion(region);
  return new NotFoundError(`Region "${region}" does not exist`);
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
    // Marking the backup too makes a deletion of it that read no dependant fail its commit.
    markWrite(op, region, ...(input.backup === null ? [] : [input.backup]));
    const res = await op.commit();
    if (res.ok) {
      return { config, created: current.versionstamp === null, consistencyToken: res.versionstamp };
    }
  }
  throw new UnavailableError(`Cannot configure region "${region}": too many concurrent changes`);
}

/** What must be gone before a region can be deleted, in the order an operator clears it. */
const IN_USE: ReadonlyArray<
  { what: string; used: (kv: Deno.Kv, region: string) => Promise<boolean> }
> = [
  { what: "resources (delete them first)", used: (kv, r) => anyUnder(kv, keys.resources(r)) },
  {
    what: "live leases (release or revoke them, or let them expire)",
    used: (kv, r) => anyUnder(kv, keys.leases(r)),
  },
  {
    // Retires on the way the entries of messages dead-lettered since (see the next).
    what: "status messages waiting to be applied",
    used: async (kv, r) => (await oldestPending(kv, r)).oldest !== null,
  },
  {
    what: "dead-lettered status messages (discard them first)",
    used: (kv, r) => anyUnder(kv, keys.deadLetters(r)),
  },
];

/** Most dependants a refusal names. */
const NAMED_DEPENDANTS = 5;

/** Most lease-loss records a deletion clears in its commit (each checked: 100 checks at most). */
const CLEARED_LOSSES = 90;

/**
 * Deletes a region that nothing uses any more: no resources, leases, pending or dead-lettered
 * status, and no region naming it as backup (409 otherwise, naming what is left). Its ended
 * claims stay readable until they expire. A refusal names only the dependants `visible`
 * (a region-scoped token's regions; null: all). The commit checks the configuration and the
 * region's write mark read before those checks, so any write to the region or any region
 * newly naming it as backup in between makes it look again.
 */
export async function deleteRegion(
  kv: Deno.Kv,
  region: string,
  visible: ReadonlySet<string> | null,
): Promise<{ consistencyToken: string }> {
  attempts: for (let attempt = 0; attempt < 5; attempt++) {
    const [config, mark] = await kv.getMany<[RegionConfig, unknown]>([
      keys.regionConfig(region),
      keys.writeMark(region),
    ]);
    if (config.versionstamp === null) throw regionNotFound(region);
    for (const { what, used } of IN_USE) {
      if (await used(kv, region)) {
        throw new InUseError(`Cannot delete region "${region}": it still has ${what}`);
      }
    }
    const dependants = await backupDependants(kv, region);
    if (dependants.length > 0) {
      // A region-scoped token is told how many regions outside its scope, not their names.
      const named = dependants.filter((name) => visible?.has(name) ?? true)
        .slice(0, NAMED_DEPENDANTS);
      const more = dependants.length - named.length;
      const which = named.length === 0
        ? `${more} other region${more === 1 ? "" : "s"}`
        : named.map((name) => `"${name}"`).join(", ") + (more > 0 ? ` and ${more} more` : "");
      throw new InUseError(
        `Cannot delete region "${region}": it is the backup of ${which} (give them another backup first)`,
      );
    }
    // With no resource and no lease left, a removal's lease-loss record has nothing left to
    // end: one a crash left behind (its sweep chain gone with the last lease) goes with the
    // region rather than hold its deletion up for ever, those beyond one commit's checks first.
    let losses = await leaseLossRecords(kv, region);
    while (losses.length > CLEARED_LOSSES) {
      const first = losses.slice(0, CLEARED_LOSSES);
      const clear = kv.atomic().check(config, mark, ...first);
      for (const loss of first) clear.delete(loss.key);
      if (!(await clear.commit()).ok) continue attempts;
      losses = await leaseLossRecords(kv, region);
    }
    const op = kv.atomic().check(config, mark, ...losses).delete(config.key);
    for (const key of keys.regionBookkeeping(region)) op.delete(key);
    for (const loss of losses) op.delete(loss.key);
    // Moved on, not deleted: a status applier's copy of the resources is trusted while this
    // versionstamp stays the one it was taken at, and a deleted key would be null again, as
    // it was when a region of the same name had no resource yet.
    bumpResourcesVersion(op, region);
    const res = await op.commit();
    if (res.ok) {
      forgetRegion(region);
      return { consistencyToken: res.versionstamp };
    }
  }
  throw new UnavailableError(`Cannot delete region "${region}": too many concurrent changes`);
}

/** Up to one more than CLEARED_LOSSES of the region's lease-loss records. */
function leaseLossRecords(kv: Deno.Kv, region: string): Promise<Deno.KvEntry<unknown>[]> {
  return Array.fromAsync(
    kv.list({ prefix: keys.leaseLosses(region) }, { limit: CLEARED_LOSSES + 1 }),
  );
}

/** The regions whose backup is `region`, in name order. */
async function backupDependants(kv: Deno.Kv, region: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of kv.list<RegionConfig>({ prefix: keys.regionConfigs() })) {
    if (entry.value.backup === region) names.push(entry.value.name);
  }
  return names;
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
  return regionView(config, mode, lag, await poolCounts(kv, region));
}

/**
 * What a write of `config` answers: the region as describeRegion reads it or, when another
 * admin deleted it right after that write, the configuration written, as the empty region a
 * deletion requires (the write did happen; its token says when).
 */
export async function describeWritten(
  kv: Deno.Kv,
  clock: Clock,
  config: RegionConfig,
): Promise<RegionView> {
  try {
    return await describeRegion(kv, clock, config.name);
  } catch (error) {
    if (!(error instanceof NotFoundError)) throw error;
    const lag = { lagMs: 0, pending: 0, enqueued: 0, applied: 0, deadLettered: 0 };
    return regionView(config, initialMode(config), lag, { total: 0, free: 0, claimed: 0 });
  }
}

function regionView(
  config: RegionConfig,
  mode: ModeRecord,
  lag: Lag,
  counts: PoolCounts,
): RegionView {
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
  // A region deleted since the listing read its name is left out, not a failed page.
  const views = await Promise.all(
    names.map((name) =>
      describeRegion(kv, clock, name).catch((error) => {
        if (error instanceof NotFoundError) return null;
        throw error;
      })
    ),
  );
  return { items: views.filter((view) => view !== null), cursor };
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
