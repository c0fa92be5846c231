/**
 * Every Deno KV key allot uses, built here and nowhere else. A region's
 * configuration lives at ["regions", name]; everything else of a region lives
 * under its own prefix ["r", name, ...], so a region's state can be listed,
 * counted or moved on its own.
 */

type RegionKey<T extends readonly Deno.KvKeyPart[]> = readonly ["r", string, ...T];

const regionKey = <T extends Deno.KvKeyPart[]>(region: string, ...rest: T): RegionKey<T> => [
  "r",
  region,
  ...rest,
];

/** FNV-1a over a resource's slot: spreads free-index entries uniformly over [0, 2^32). */
export function freeIndexHash(resource: string, slot: number): number {
  let hash = 0x811c9dc5;
  const text = `${resource}#${slot}`;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/** Counters kept with `sum` so hot writers never conflict on them. */
export const COUNTER_NAMES = ["slots", "free", "held", "enqueued", "applied", "dead"] as const;
export type CounterName = typeof COUNTER_NAMES[number];

export const keys = {
  /** Region configuration (RegionConfig). */
  regionConfig: (region: string) => ["regions", region] as const,
  /** Prefix listing every region's configuration. */
  regionConfigs: () => ["regions"] as const,

  /** A resource's spec: slots, labels, state (what decides claimability). */
  resource: (region: string, id: string) => regionKey(region, "res", id),
  resources: (region: string) => regionKey(region, "res"),
  /** A resource's telemetry: last applied status seq and load (changes often, never checked by claims). */
  telemetry: (region: string, id: string) => regionKey(region, "tel", id),
  telemetries: (region: string) => regionKey(region, "tel"),
  /**
   * Set by every write to a spec or telemetry of the region. A status apply checks it,
   * read before those entries, instead of each of them (one check, not one per update),
   * and keeps its cache of them for as long as its versionstamp is the one it last wrote.
   */
  resourcesVersion: (region: string) => regionKey(region, "rv"),

  /** A held slot: present exactly while a live lease holds it. */
  slot: (region: string, id: string, slot: number) => regionKey(region, "slot", id, slot),
  slots: (region: string, id: string) => regionKey(region, "slot", id),
  allSlots: (region: string) => regionKey(region, "slot"),

  /**
   * Free-slot index: present exactly when the slot is claimable and not held.
   * Ordered by a hash so a claim can start reading at a random point.
   */
  free: (region: string, id: string, slot: number) =>
    regionKey(region, "free", freeIndexHash(id, slot), id, slot),
  freeFrom: (region: string, hash: number) => regionKey(region, "free", hash),
  freeIndex: (region: string) => regionKey(region, "free"),

  /** A claim record, kept for a while after it ends. */
  claim: (region: string, id: string) => regionKey(region, "claim", id),
  claims: (region: string) => regionKey(region, "claim"),
  /** Lease expiry index: live leases ordered by expiry, for the sweeper. */
  lease: (region: string, expiresAt: number, claimId: string) =>
    regionKey(region, "lease", expiresAt, claimId),
  leases: (region: string) => regionKey(region, "lease"),
  leasesUntil: (region: string, until: number) => regionKey(region, "lease", until),
  /**
   * The region's expiry sweep chain (SweeperState): written only when a chain starts or
   * ends, and checked by every claim and renew that relies on it.
   */
  sweeper: (region: string) => regionKey(region, "sweep"),
  /** The chain's heartbeat (SweeperBeat): rewritten by each sweep, checked by no one. */
  sweeperBeat: (region: string) => regionKey(region, "sweepbeat"),

  /**
   * A resource's removal (gone or deleted) whose leases may not all be ended yet
   * (LeaseLoss): written in the commit that removed it, so its versionstamp dates the
   * removal; deleted once those leases are lost.
   */
  leaseLoss: (region: string, id: string) => regionKey(region, "loss", id),
  leaseLosses: (region: string) => regionKey(region, "loss"),

  /** Idempotency record, scoped to the caller and the region asked for. */
  idempotency: (region: string, caller: string, key: string) =>
    regionKey(region, "idem", caller, key),

  /** Status messages enqueued and not yet applied, oldest first: the lag watermark. */
  pending: (region: string, enqueuedAt: number, messageId: string) =>
    regionKey(region, "pending", enqueuedAt, messageId),
  pendingIndex: (region: string) => regionKey(region, "pending"),
  /** Where the queue writes a status message that exhausted its retries. */
  deadLetter: (region: string, messageId: string) => regionKey(region, "dead", messageId),
  deadLetters: (region: string) => regionKey(region, "dead"),
  /** Primary/fallback mode, since when and why, with recent history. */
  mode: (region: string) => regionKey(region, "mode"),

  /** Pool and pipeline counters. */
  counter: (region: string, name: CounterName) => regionKey(region, "n", name),
  /** Blind-written by every write to the region: its versionstamp proves a replica has caught up. */
  writeMark: (region: string) => regionKey(region, "wm"),

  /**
   * A region's own bookkeeping, none of it about a resource, claim or message: what deleting
   * the region removes with its configuration (ended claims, tombstones and idempotency keys
   * expire on their own; the resources version stays, see deleteRegion).
   */
  regionBookkeeping: (region: string): Deno.KvKey[] => [
    keys.mode(region),
    keys.writeMark(region),
    keys.sweeper(region),
    keys.sweeperBeat(region),
    ...COUNTER_NAMES.map((name) => keys.counter(region, name)),
  ],

  /** Which process runs the region watch (region_watch.ts), and until when. */
  regionWatch: () => ["watch"] as const,

  /** Read (never written) by the readiness probe: any key proves the store answers. */
  readinessProbe: () => ["readyz"] as const,
} as const;
