/**
 * Status ingestion and the plan that applies it. A request's updates are made durable
 * with kv.enqueue in the same atomic that records them in the region's lag watermark,
 * so a 202 survives a crash and the watermark can never miss a message.
 */
import { newId } from "./ids.ts";
import { ATOMIC_LIMITS, type AtomicPlan, encodedSize, isSizeLimitError } from "./atomic.ts";
import type { Clock } from "./clock.ts";
import { TooLargeError, UnavailableError } from "./errors.ts";
import { keys } from "./keys.ts";
import { log } from "./log.ts";
import { addCounter, bumpResourcesVersion, counterValue, getAll, markWrite } from "./kv.ts";
import { type CachedResource, ResourceCache } from "./resource_cache.ts";
import { lagCounterKeys, type PendingMessage } from "./lag.ts";
import { readHeldSlotsOf, type ResourceSpec, stageSpecChange } from "./pool.ts";
import type { StatusBatchMessage } from "./queue.ts";
import { regionNotFound } from "./regions.ts";
import {
  afterTombstone,
  type FieldSeq,
  fieldSeqOf,
  finishUnfinishedLosses,
  stageLeaseLoss,
  type Telemetry,
} from "./resources.ts";
import { MAX_STATUS_UPDATES, type StatusUpdate } from "./schemas.ts";

/**
 * Updates per queue message. A load report costs one mutation when applied (the
 * telemetry is covered by the region's one version check), so a message of load reports
 * applies in one atomic; registrations cost checks too, and a message of many is applied
 * in parts (StatusApplier).
 */
export const UPDATES_PER_MESSAGE = 500;
/** Bytes of updates per queue message, as encodedSize counts them (Deno KV caps one at 64 KiB). */
const MESSAGE_BYTES = 48 * 1024;
/** Ingest refuses new batches while this many updates of a region wait (bounded backlog). */
export const MAX_PENDING_UPDATES = 100_000;
/**
 * Within this many updates of the bound, a batch's commit checks the enqueued counter it
 * read: batches racing for the last room then commit one at a time (the others re-read),
 * while far from it they stay conflict-free. Only more than ten full batches reading the
 * same counter before any commits can pass the bound.
 */
const NEAR_BOUND = 10 * MAX_STATUS_UPDATES;
/**
 * Redelivery delays for a status message before it is dead-lettered: as many as Deno
 * KV allows (5), spread over ~50 s, since a crash during a delivery uses one up.
 */
export const STATUS_BACKOFF_MS = [100, 1000, 5000, 15_000, 30_000];

/** How every status message is enqueued: its dead letter and its redelivery delays. */
function queueOptions(message: StatusBatchMessage) {
  return {
    keysIfUndelivered: [keys.deadLetter(message.region, message.id)],
    backoffSchedule: STATUS_BACKOFF_MS,
  };
}

/**
 * Puts a delivered status message back in the queue, due in `delayMs`, as the consumer
 * does when it holds as many as it may. Its pending entry stays, so the region's lag
 * keeps counting it; delivered twice (a crash right after this), the second delivery
 * finds it applied and skips it.
 */
export async function deferStatus(
  kv: Deno.Kv,
  message: StatusBatchMessage,
  delayMs: number,
): Promise<void> {
  await kv.enqueue(message, { ...queueOptions(message), delay: delayMs });
}

/**
 * Splits updates into messages bounded by count and bytes; `bytes` is the whole batch's
 * size as encodedSize counts it.
 */
function chunkUpdates(
  updates: readonly StatusUpdate[],
): { chunks: StatusUpdate[][]; bytes: number } {
  const chunks: StatusUpdate[][] = [];
  let current: StatusUpdate[] = [];
  let bytes = 0;
  let total = 0;
  for (const update of updates) {
    const size = encodedSize(update);
    if (
      current.length >= UPDATES_PER_MESSAGE || (current.length > 0 && bytes + size > MESSAGE_BYTES)
    ) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(update);
    bytes += size;
    total += size;
  }
  if (current.length > 0) chunks.push(current);
  return { chunks, bytes: total };
}

/**
 * Makes a validated batch durable: one atomic enqueues its messages, writes their
 * pending-index entries and bumps the region's `enqueued` counter. 503 + Retry-After
 * when the region's backlog is over its bound; 413 when the batch, as Deno KV counts its
 * bytes, would not fit one atomic (a batch is accepted whole or not at all).
 */
export async function ingestStatus(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  updates: readonly StatusUpdate[],
): Promise<{ accepted: number; messages: StatusBatchMessage[]; consistencyToken: string }> {
  const { chunks, bytes } = chunkUpdates(updates);
  // The configuration is checked so that a region deleted meanwhile gets no message; a
  // configuration changed meanwhile only costs another try.
  for (let attempt = 0; attempt < 3; attempt++) {
    const [config, ...counters] = await kv.getMany([
      keys.regionConfig(region),
      ...lagCounterKeys(region),
    ]);
    if (config.versionstamp === null) throw regionNotFound(region);
    const [enqueued, applied, dead] = counters.map(counterValue);
    const waiting = enqueued - applied - dead;
    if (waiting + updates.length > MAX_PENDING_UPDATES) {
      throw new UnavailableError(
        `Cannot accept status for region "${region}": ${waiting} updates are still waiting to be applied`,
        2,
      );
    }
    if (bytes > ATOMIC_LIMITS.bytes) throw batchTooLarge(region, updates.length, bytes);
    const enqueuedAt = clock.now();
    const messages = chunks.map((chunk): StatusBatchMessage => ({
      type: "status.batch",
      id: newId(),
      region,
      enqueuedAt,
      updates: chunk,
    }));
    const op = kv.atomic().check(config);
    if (waiting + updates.length > MAX_PENDING_UPDATES - NEAR_BOUND) op.check(counters[0]);
    for (const message of messages) {
      op.enqueue(message, queueOptions(message));
      op.set(
        keys.pending(region, enqueuedAt, message.id),
        { count: message.updates.length } satisfies PendingMessage,
      );
    }
    addCounter(op, region, "enqueued", updates.length);
    markWrite(op, region);
    const res = await op.commit().catch((error) => {
      // The estimate should have caught it; this is the backstop: a 413, never a 500.
      throw isSizeLimitError(error) ? batchTooLarge(region, updates.length, bytes) : error;
    });
    if (res.ok) return { accepted: updates.length, messages, consistencyToken: res.versionstamp };
  }
  throw new UnavailableError(`Cannot accept status for region "${region}": retry`);
}

function batchTooLarge(region: string, updates: number, bytes: number): TooLargeError {
  return new TooLargeError(
    `Cannot accept status for region "${region}": ${updates} updates are too large to store ` +
      `in one commit (about ${bytes} bytes as Deno KV counts them, where text with characters ` +
      `above U+00FF takes two bytes a character; at most ${ATOMIC_LIMITS.bytes}); send them in ` +
      `smaller batches`,
  );
}

/** A resource's fields after a set of updates, and the updates that supplied them. */
export interface Merged {
  spec: ResourceSpec;
  telemetry: Telemetry;
  /** Updates that supplied at least one field (the rest were no-ops). */
  used: number;
  /** The update the merged state came from (null: the state is unchanged). */
  stateFrom: StatusUpdate | null;
  /**
   * Copies of the newest `gone` report that loses leases here (empty: none): newer than any
   * that lost leases before (Telemetry.goneSeq), even if a newer report brought the
   * resource back, in these updates or before them (a gone delivered late).
   */
  goneBy: StatusUpdate[];
}

/**
 * Merges updates into a resource per field, last writer (highest seq) wins: a field
 * takes the value of the highest-seq update that carries it, if that seq is newer
 * than the one the field's current value came from. Commutative and idempotent, so
 * duplicated and reordered deliveries end in the state an in-order delivery gives.
 * Null when no update is newer for any field.
 */
export function mergeUpdates(
  id: string,
  spec: ResourceSpec | null,
  stored: Telemetry | null,
  updates: readonly StatusUpdate[],
  now: number,
  storedAt?: string,
): Merged | null {
  // Telemetry without a spec is a deleted resource's tombstone (written at `storedAt`): only
  // an update newer than all its seqs was sent after the deletion, and may register the
  // resource again.
  const telemetry = spec === null && stored !== null ? afterTombstone(stored, storedAt) : stored;
  const fieldSeq = fieldSeqOf(telemetry);
  // A record written before goneSeq and stateAcceptedAt were kept takes no gone older than
  // its state: it cannot tell whether one lost leases already, nor when the state was sent.
  const stateAcceptedAt = telemetry?.stateAcceptedAt;
  const goneSeq = stateAcceptedAt === undefined
    ? fieldSeq.state
    : telemetry?.goneSeq ?? fieldSeq.state;
  const used = new Set<StatusUpdate>();
  const newest = <F extends keyof FieldSeq>(field: F): StatusUpdate | null => {
    let best: StatusUpdate | null = null;
    for (const u of updates) {
      if (u[field] === undefined || u.seq <= fieldSeq[field]) continue;
      // Equal seqs with different values (an agent bug) still resolve the same way in any order.
      if (
        best === null || u.seq > best.seq ||
        (u.seq === best.seq && JSON.stringify(u) > JSON.stringify(best))
      ) best = u;
    }
    if (best) used.add(best);
    return best;
  };
  const state = newest("state");
  const slots = newest("slots");
  const labels = newest("labels");
  const load = newest("load");
  const gones = updates.filter((u) => u.state === "gone" && u.seq > goneSeq);
  const newestGone = Math.max(goneSeq, ...gones.map((u) => u.seq));
  for (const u of gones) used.add(u);
  if (used.size === 0) return null;
  const base = spec ?? { id, slots: 1, labels: {}, state: "ready" as const, updatedAt: now };
  return {
    spec: {
      id,
      state: state?.state ?? base.state,
      slots: slots?.slots ?? base.slots,
      labels: labels?.labels ?? base.labels,
      updatedAt: now,
    },
    telemetry: {
      seq: Math.max(telemetry?.seq ?? 0, ...[...used].map((u) => u.seq)),
      load: load?.load ?? telemetry?.load ?? null,
      at: now,
      fieldSeq: {
        state: state?.seq ?? fieldSeq.state,
        slots: slots?.seq ?? fieldSeq.slots,
        labels: labels?.seq ?? fieldSeq.labels,
        load: load?.seq ?? fieldSeq.load,
      },
      goneSeq: newestGone,
      // Kept as they were; the caller dates a new state's report (it knows when each was
      // accepted).
      ...(stateAcceptedAt === undefined ? {} : { stateAcceptedAt }),
      ...(telemetry?.deletedAt === undefined ? {} : { deletedAt: telemetry.deletedAt }),
    },
    used: used.size,
    stateFrom: state,
    goneBy: gones.filter((u) => u.seq === newestGone),
  };
}

function specChanged(before: ResourceSpec | null, after: ResourceSpec): boolean {
  // A first report creates the spec even when it says gone: a later, older "ready" must not revive it.
  if (before === null) return true;
  return before.state !== after.state || before.slots !== after.slots ||
    JSON.stringify(before.labels) !== JSON.stringify(after.labels);
}

/** What planning a group of messages produced. */
export interface PlannedApply {
  /** Updates that supplied a field (the rest were superseded or already applied). */
  effective: number;
  /**
   * Updates of the messages this plan completes, by the region each message was accepted
   * for (one commit may span several).
   */
  processedIn: Map<string, number>;
  /** Messages whose bookkeeping is in this plan. */
  completed: number;
  regions: Set<string>;
  /**
   * Resources this plan reports `gone` (Merged.goneBy), each with its lease loss recorded
   * in the plan: their leases are then marked lost.
   */
  gone: Array<{ region: string; id: string }>;
  /** Tells the cache what the plan read and wrote, once its commit succeeded. */
  committed(versionstamp: string): void;
}

/** What planning needs besides the messages. */
export interface PlanOptions {
  /** False plans the updates only, without the messages' bookkeeping. */
  bookkeep?: boolean;
  /** Resource copies that spare the reads while the region's resources version is unchanged. */
  cache?: ResourceCache;
  /**
   * Check each spec and telemetry entry written instead of the region's resources version
   * (which is then only set): for regions other consumers are applying to at the same
   * time, whose commits would otherwise all conflict on that one key. At most about 100
   * updates then fit a commit, and the cache is neither used nor kept.
   */
  checkEach?: boolean;
}

/**
 * Plans the apply of `messages` into `plan`: per resource, every update newer than
 * the applied seq, coalesced, with checks on what was read (the region's resources
 * version, which covers every spec and telemetry entry read after it, or with
 * `checkEach` those entries themselves; and the slots of a spec that changes), and each
 * message's watermark bookkeeping (checked, so a redelivered message that was already
 * applied counts nothing twice).
 */
export async function planApply(
  kv: Deno.Kv,
  clock: Clock,
  plan: AtomicPlan,
  messages: readonly StatusBatchMessage[],
  { bookkeep = true, cache = new ResourceCache(0), checkEach = false }: PlanOptions = {},
): Promise<PlannedApply> {
  const now = clock.now();
  const unique = [...new Map(messages.map((m) => [m.id, m])).values()];
  const pending = await getAll<PendingMessage>(
    kv,
    unique.map((m) => keys.pending(m.region, m.enqueuedAt, m.id)),
  );
  // No pending entry: the message was applied already (a redelivery), so it is skipped whole.
  const live = unique.flatMap((message, i) =>
    pending[i].versionstamp === null ? [] : [{ message, pending: pending[i] }]
  );
  // When each update was accepted: its message's ingest commit.
  const accepted = new Map<StatusUpdate, string>();
  const acceptedAt = (update: StatusUpdate) => accepted.get(update)!;
  const byResource = new Map<string, { region: string; id: string; updates: StatusUpdate[] }>();
  for (const { message, pending } of live) {
    for (const update of message.updates) {
      accepted.set(update, pending.versionstamp!);
      const k = `${message.region}\u0000${update.resource}`;
      const group = byResource.get(k) ??
        { region: message.region, id: update.resource, updates: [] };
      group.updates.push(update);
      byResource.set(k, group);
    }
  }
  const groups = [...byResource.values()];
  const regions = await readRegionResources(kv, checkEach ? new ResourceCache(0) : cache, groups);
  const result: PlannedApply = {
    effective: 0,
    processedIn: new Map(),
    completed: 0,
    regions: new Set(),
    gone: [],
    committed(versionstamp) {
      for (const [region, { version, resources, bumped }] of regions) {
        // Set without a check, the version may hide another writer's change: trust no copy.
        if (checkEach) {
          cache.forget(region);
          continue;
        }
        for (const resource of resources.values()) {
          if (resource.specVersionstamp === THIS_COMMIT) resource.specVersionstamp = versionstamp;
          if (resource.telemetryVersionstamp === THIS_COMMIT) {
            resource.telemetryVersionstamp = versionstamp;
          }
        }
        cache.record(
          region,
          version.versionstamp,
          bumped ? versionstamp : version.versionstamp,
          resources,
        );
      }
    },
  };
  const changes: Array<{
    region: string;
    before: Deno.KvEntryMaybe<ResourceSpec>;
    after: CachedResource & { spec: ResourceSpec };
  }> = [];
  const losses: Loss[] = [];
  /** Resources a report brings back, registered again or no longer gone. */
  const back: Array<{ region: string; id: string }> = [];
  for (const { region, id, updates } of groups) {
    const read = regions.get(region)!;
    const current = read.resources.get(id)!;
    // A report accepted before the resource's last deletion is older than it, whatever its
    // seq: a tombstone (telemetry, no spec) was written by the deletion, and a resource
    // registered again since keeps its date.
    const tombstone = current.spec === null ? current.telemetryVersionstamp : null;
    const deletedAt = tombstone ?? current.telemetry?.deletedAt ?? null;
    const merged = mergeUpdates(
      id,
      current.spec,
      current.telemetry,
      deletedAt === null ? updates : updates.filter((u) => acceptedAt(u) > deletedAt),
      now,
      tombstone ?? undefined,
    );
    if (merged === null) continue;
    if (merged.stateFrom) merged.telemetry.stateAcceptedAt = acceptedAt(merged.stateFrom);
    if (!read.bumped) {
      if (!checkEach) plan.check(read.version);
      bumpResourcesVersion(plan, region);
      read.bumped = true;
    }
    if (checkEach) {
      plan.check({ key: keys.telemetry(region, id), versionstamp: current.telemetryVersionstamp });
    }
    plan.set(keys.telemetry(region, id), merged.telemetry);
    const after: CachedResource = {
      ...current,
      telemetry: merged.telemetry,
      telemetryVersionstamp: THIS_COMMIT,
    };
    if (specChanged(current.spec, merged.spec)) {
      const before = {
        key: keys.resource(region, id),
        value: current.spec,
        versionstamp: current.specVersionstamp,
      } as Deno.KvEntryMaybe<ResourceSpec>;
      after.spec = merged.spec;
      after.specVersionstamp = THIS_COMMIT;
      changes.push({ region, before, after: after as CachedResource & { spec: ResourceSpec } });
    }
    if (merged.goneBy.length > 0) {
      losses.push({ region, id, before: lossCut(merged, acceptedAt) });
    } else if (
      (tombstone !== null || current.spec?.state === "gone") &&
      merged.spec !== null && merged.spec.state !== "gone"
    ) {
      back.push({ region, id });
    }
    read.resources.set(id, after);
    result.effective += merged.used;
    result.regions.add(region);
  }
  await stageLosses(kv, clock, plan, losses, result);
  // A removal's loss cut short must not carry its leases onto the resource brought back; a
  // failure here leaves that to the region's sweep chain rather than fail the apply group.
  await finishUnfinishedLosses(kv, clock, back).catch((error) => {
    log("warn", "a lease loss left by a removal could not be finished; the sweep will", {
      error: String(error),
    });
  });
  const held = await readHeldSlotsOf(
    kv,
    changes.map(({ region, before, after }) => ({
      region,
      id: after.spec.id,
      slots: Math.max(before.value?.slots ?? 0, after.spec.slots),
    })),
  );
  changes.forEach(({ region, before, after }, i) => {
    stageSpecChange(plan, region, before, after.spec, held[i], !checkEach);
  });
  if (bookkeep) {
    for (const { message, pending } of live) {
      plan.check(pending);
      plan.delete(pending.key);
      addCounter(plan, message.region, "applied", pending.value!.count);
      result.processedIn.set(
        message.region,
        (result.processedIn.get(message.region) ?? 0) + pending.value!.count,
      );
      result.regions.add(message.region);
      result.completed++;
    }
  }
  for (const region of result.regions) markWrite(plan, region);
  return result;
}

/**
 * Where a gone's lease loss cuts (undefined: at this commit, every live lease). Still gone:
 * everything. Back (a newer report says so, applied now or before): the leases taken before
 * the gone was reported (its first copy accepted) were on the instance that went away; one
 * taken since may be on the one that came back, and is spared, as is one taken once the
 * report that it was back was accepted (when an agent's retried gone arrives after it).
 * The same cut whether the gone is applied with the newer report or after it.
 */
function lossCut(
  merged: Merged,
  acceptedAt: (update: StatusUpdate) => string,
): string | undefined {
  if (merged.spec.state === "gone") return undefined;
  const reported = merged.goneBy.map(acceptedAt).sort()[0];
  const back = merged.telemetry.stateAcceptedAt ?? reported;
  return reported < back ? reported : back;
}

/** A lease loss a `gone` asks for: the leases taken before `before` (or this commit). */
interface Loss {
  region: string;
  id: string;
  before?: string;
}

/**
 * Records the lease losses of `gone` reports. A loss recorded earlier and not yet finished
 * (a DELETE's, say, cut short by a crash) is finished first, as the sweep chain would: a
 * new record in its place would lose its leases with another reason, or not at all.
 */
async function stageLosses(
  kv: Deno.Kv,
  clock: Clock,
  plan: AtomicPlan,
  losses: readonly Loss[],
  result: PlannedApply,
): Promise<void> {
  await finishUnfinishedLosses(kv, clock, losses);
  for (const { region, id, before } of losses) {
    stageLeaseLoss(plan, region, id, "resource gone", before);
    result.gone.push({ region, id });
    result.regions.add(region);
  }
}

/** Stands for the versionstamp of the commit being planned, until it is known. */
const THIS_COMMIT = "(this commit)";

interface RegionRead {
  /** The region's resources version, read before any resource. */
  version: Deno.KvEntryMaybe<unknown>;
  /** Whether the plan checks and bumps the version (it writes a spec or telemetry). */
  bumped: boolean;
  /** Every resource the plan touches, as read (or cached), then as planned. */
  resources: Map<string, CachedResource>;
}

/**
 * Reads each region's resources version, then the spec and telemetry of every resource
 * the groups touch that the cache does not hold at that version. A write after the
 * version read changes it, so checking the version at commit covers all of them.
 */
async function readRegionResources(
  kv: Deno.Kv,
  cache: ResourceCache,
  groups: ReadonlyArray<{ region: string; id: string }>,
): Promise<Map<string, RegionRead>> {
  const names = [...new Set(groups.map((g) => g.region))];
  const versions = await getAll(kv, names.map(keys.resourcesVersion));
  const regions = new Map(names.map((name, i): [string, RegionRead] => [
    name,
    { version: versions[i], bumped: false, resources: new Map() },
  ]));
  const missing: Array<{ region: string; id: string }> = [];
  for (const { region, id } of groups) {
    const read = regions.get(region)!;
    const cached = cache.at(region, read.version.versionstamp).get(id);
    // Without a spec, what is cached may be a tombstone, which Deno KV expires without
    // moving the resources version: read it afresh, as an applier with no copy would.
    if (cached === undefined || cached.spec === null) missing.push({ region, id });
    else read.resources.set(id, cached);
  }
  const entries = await getAll<ResourceSpec | Telemetry>(
    kv,
    missing.flatMap(({ region, id }) => [keys.resource(region, id), keys.telemetry(region, id)]),
  );
  missing.forEach(({ region, id }, i) => {
    regions.get(region)!.resources.set(id, {
      spec: entries[2 * i].value as ResourceSpec | null,
      specVersionstamp: entries[2 * i].versionstamp,
      telemetry: entries[2 * i + 1].value as Telemetry | null,
      telemetryVersionstamp: entries[2 * i + 1].versionstamp,
    });
  });
  return regions;
}
