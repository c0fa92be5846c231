/**
 * The status applier's copy of resource specs and telemetry, per region, as of one
 * versionstamp of the region's resources version (keys.resourcesVersion). Every write
 * to a spec or telemetry sets that key, so while it still carries the versionstamp the
 * cache was taken at, every cached entry is what the store holds: an apply then reads
 * one key instead of two per update. Any other versionstamp drops the region's copy.
 */
import type { ResourceSpec } from "./pool.ts";
import type { Telemetry } from "./resources.ts";

/** One resource as the cache holds it: its spec and telemetry entries' values and versionstamps. */
export interface CachedResource {
  spec: ResourceSpec | null;
  specVersionstamp: string | null;
  telemetry: Telemetry | null;
  telemetryVersionstamp: string | null;
}

interface RegionCopy {
  versionstamp: string | null;
  resources: Map<string, CachedResource>;
}

/**
 * Resources cached at most, over all regions: about 0.5 KB each, so the cap bounds the
 * memory; past it, resources not yet cached are read every time (still correct).
 */
export const MAX_CACHED_RESOURCES = 20_000;

/** Per-region resource copies, valid only at the versionstamp they were taken at. */
export class ResourceCache {
  #regions = new Map<string, RegionCopy>();
  #size = 0;

  constructor(private readonly maxResources = MAX_CACHED_RESOURCES) {}

  /** Resources cached in all. */
  get size(): number {
    return this.#size;
  }

  /**
   * The region's cached resources if the region's resources version is still
   * `versionstamp` (as just read); otherwise forgets them and returns an empty map.
   */
  at(region: string, versionstamp: string | null): ReadonlyMap<string, CachedResource> {
    const copy = this.#regions.get(region);
    if (copy === undefined) return new Map();
    if (copy.versionstamp === versionstamp) return copy.resources;
    this.forget(region);
    return new Map();
  }

  /**
   * Records what a successful commit leaves: the region's version moved from `from`
   * (as read when planning) to `to`, and `resources` hold these values. A copy taken
   * at another versionstamp than `from` is stale and dropped first.
   */
  record(
    region: string,
    from: string | null,
    to: string | null,
    resources: Iterable<[string, CachedResource]>,
  ): void {
    let copy = this.#regions.get(region);
    if (copy !== undefined && copy.versionstamp !== from) {
      this.forget(region);
      copy = undefined;
    }
    if (copy === undefined) {
      copy = { versionstamp: to, resources: new Map() };
      this.#regions.set(region, copy);
    }
    copy.versionstamp = to;
    for (const [id, resource] of resources) {
      if (!copy.resources.has(id)) {
        if (this.#size >= this.maxResources) continue;
        this.#size++;
      }
      copy.resources.set(id, resource);
    }
  }

  /** Drops the region's copy. */
  forget(region: string): void {
    this.#size -= this.#regions.get(region)?.resources.size ?? 0;
    this.#regions.delete(region);
  }
}
