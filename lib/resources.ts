/** Resources: registration, updates, removal and listing. */
import type { Clock } from "./clock.ts";
import { LeaseLostError, NotFoundError, UnavailableError } from "./errors.ts";
import { keys } from "./keys.ts";
import { bumpResourcesVersion, getAll, listPage, markWrite } from "./kv.ts";
import { endLiveLease } from "./leases.ts";
import { log } from "./log.ts";
import type { AtomicWriter } from "./atomic.ts";
import { readHeldSlots, type ResourceSpec, stageSpecChange } from "./pool.ts";
import { getRegionConfig, regionNotFound } from "./regions.ts";
import type { RegionConfig, Resource, ResourceInput } from "./schemas.ts";

/** Telemetry from the status pipeline, kept apart from the spec so load reports never conflict with claims. */
export interface Telemetry {
  /** Highest status seq applied. */
  seq: number;
  load: number | null;
  at: number;
  /** Seq of the update each field's value came from (per-field last-writer-wins). */
  fieldSeq: FieldSeq;
  /**
   * Seq of the newest `gone` report that has lost leases, also one applied late (after a
   * newer report set the state): no report up to it loses any again. Absent in records
   * written before it was kept, where the state's seq stands in for it.
   */
  goneSeq?: number;
  /**
   * When the report the state came from was accepted (its ingest commit's versionstamp):
   * a `gone` delivered after it loses the leases taken before then. Absent in records
   * written before it was kept, and until a report sets the state.
   */
  stateAcceptedAt?: string;
  /**
   * When the resource was last deleted (the DELETE's commit), once registered again: a
   * report accepted before it is older than the deletion, whatever its seq, and never
   * applies. (A tombstone's own versionstamp dates its deletion until then.)
   */
  deletedAt?: string;
}

/**
 * How long a deleted resource's seqs outlive it: far longer than any status message stays
 * in the queue (retries end in the dead letter within about a minute), so none older than
 * the deletion can bring the resource back.
 */
const TELEMETRY_TOMBSTONE_MS = 24 * 3600 * 1000;

/** The telemetry of a resource no status report has reached. */
const NO_TELEMETRY: Telemetry = {
  seq: 0,
  load: null,
  at: 0,
  fieldSeq: { state: 0, slots: 0, labels: 0, load: 0 },
  goneSeq: 0,
};

/**
 * The telemetry a resource registered again over its tombstone (written at `deletedAt`)
 * starts from: every field at the tombstone's highest seq (any update up to it was sent
 * before the deletion, so it may change nothing, whatever field it carries), no load (the
 * dead instance's), and the deletion's date.
 */
export function afterTombstone(tombstone: Telemetry, deletedAt?: string): Telemetry {
  const { stateAcceptedAt: _dead, deletedAt: _earlier, ...rest } = tombstone;
  const seq = tombstone.seq;
  return {
    ...rest,
    ...(deletedAt === undefined ? {} : { deletedAt }),
    load: null,
    fieldSeq: { state: seq, slots: seq, labels: seq, load: seq },
    goneSeq: seq,
  };
}

/**
 * A spec written directly (PUT) comes after every status report applied so far: a report
 * delayed in the queue, whose seq is not above the resource's, changes none of the fields
 * the PUT set, as it changes none a newer report set. Reports sent after it (higher seqs)
 * still do. The telemetry itself when none of those fields is behind.
 */
function supersededReports(telemetry: Telemetry): Telemetry {
  const { seq } = telemetry;
  const fieldSeq = fieldSeqOf(telemetry);
  if (fieldSeq.state >= seq && fieldSeq.slots >= seq && fieldSeq.labels >= seq) return telemetry;
  return {
    ...telemetry,
    fieldSeq: {
      ...fieldSeq,
      state: Math.max(fieldSeq.state, seq),
      slots: Math.max(fieldSeq.slots, seq),
      labels: Math.max(fieldSeq.labels, seq),
    },
  };
}

/**
 * The seq each field's value came from; every field at 0 without telemetry, and in telemetry
 * written before per-field seqs were kept.
 */
export const fieldSeqOf = (telemetry: Telemetry | null): FieldSeq =>
  telemetry?.fieldSeq ?? { state: 0, slots: 0, labels: 0, load: 0 };

/** Fields a status update may carry, each ordered by its own seq. */
export type FieldSeq = Record<"state" | "slots" | "labels" | "load", number>;

function resourceView(
  region: string,
  spec: ResourceSpec,
  telemetry: Telemetry | null,
  claimed: number,
): Resource {
  return {
    id: spec.id,
    region,
    slots: spec.slots,
    labels: spec.labels,
    state: spec.state,
    seq: telemetry?.seq ?? 0,
    load: telemetry?.load ?? null,
    claimed,
    updatedAt: new Date(Math.max(spec.updatedAt, telemetry?.at ?? 0)).toISOString(),
  };
}

/**
 * Registers or replaces a resource's spec. Never frees a held slot: a slot that a
 * live lease holds stays held whatever the new slots or state say.
 */
export async function putResource(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  id: string,
  input: ResourceInput,
): Promise<{ resource: Resource; created: boolean; consistencyToken: string }> {
  const spec: ResourceSpec = { id, ...input, updatedAt: clock.now() };
  const gone = spec.state === "gone" ? "resource gone" : null;
  const change = await changeSpec(kv, clock, region, id, spec, gone);
  const { before, held } = change;
  let { consistencyToken } = change;
  if (change.lossRecorded) {
    const loss = await finishLeaseLoss(kv, clock, region, id, consistencyToken);
    consistencyToken = loss.lastCommit ?? consistencyToken;
  }
  const telemetry = await kv.get<Telemetry>(keys.telemetry(region, id));
  const claimed = spec.state === "gone" ? 0 : held;
  return {
    resource: resourceView(region, spec, telemetry.value, claimed),
    created: before === null,
    consistencyToken,
  };
}

/**
 * Removes a resource; its live leases become `lost`. 404 if it does not exist, after ending
 * the leases still held on it: a DELETE interrupted between its commit and its lease loss
 * (a crash) is finished by its retry.
 */
export async function deleteResource(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  id: string,
): Promise<{ consistencyToken: string }> {
  const change = await changeSpec(kv, clock, region, id, null, "resource deleted");
  const { before } = change;
  let { consistencyToken } = change;
  if (change.lossRecorded) {
    const loss = await finishLeaseLoss(kv, clock, region, id, consistencyToken);
    consistencyToken = loss.lastCommit ?? consistencyToken;
  }
  if (before === null) {
    throw new NotFoundError(`Resource "${id}" does not exist in region "${region}"`);
  }
  return { consistencyToken };
}

/**
 * Commits a spec change (404 if the region does not exist, also when it is deleted meanwhile);
 * `loss` (a reason) when it takes the resource away, which records
 * the lease loss in the same commit when a lease holds a slot (the commit checks the
 * slots it read free, so none is taken meanwhile). An earlier removal's loss not yet
 * finished (a crash) is finished first, by any change, so that its leases end with its own
 * reason before the resource is changed or registered again.
 */
async function changeSpec(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  id: string,
  after: ResourceSpec | null,
  loss: string | null,
): Promise<
  { before: ResourceSpec | null; held: number; consistencyToken: string; lossRecorded: boolean }
> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const [[before, telemetry, recorded, config], held] = await Promise.all([
      kv.getMany<[ResourceSpec, Telemetry, LeaseLoss, RegionConfig]>([
        keys.resource(region, id),
        keys.telemetry(region, id),
        keys.leaseLoss(region, id),
        keys.regionConfig(region),
      ]),
      readHeldSlots(kv, region, id),
    ]);
    if (config.versionstamp === null) throw regionNotFound(region);
    // Any change, a registration again included: the leases that removal took away must
    // not live on (renewed, say) on the resource registered anew. A record whose leases are
    // all gone is finished too: left by a crash, it would otherwise hold up its region's
    // deletion with no lease for the sweep chain to run for.
    if (recorded.versionstamp !== null) {
      await finishRecordedLoss(kv, clock, region, id, recorded);
      continue;
    }
    if (before.value === null && after === null) {
      if (held.size === 0) {
        return { before: null, held: 0, consistencyToken: "", lossRecorded: false };
      }
      // Slots still held on a resource already removed: a commit that sees it still absent
      // dates them, so the caller ends those leases and none taken after a new registration.
      const op = kv.atomic().check(before);
      stageLeaseLoss(op, region, id, loss ?? "resource deleted");
      const res = await op.commit();
      if (res.ok) {
        return {
          before: null,
          held: held.size,
          consistencyToken: res.versionstamp,
          lossRecorded: true,
        };
      }
      continue;
    }
    // Checked so that a region deleted meanwhile gets no resource.
    const op = kv.atomic().check(config);
    stageSpecChange(op, region, before, after, held);
    if (after === null) {
      // Kept a while as a tombstone, whose versionstamp dates the removal: a status report
      // accepted before it, or not newer than its seqs, must not register the resource again.
      op.check(telemetry).set(telemetry.key, telemetry.value ?? NO_TELEMETRY, {
        expireIn: TELEMETRY_TOMBSTONE_MS,
      });
    } else if (before.value === null && telemetry.value !== null) {
      // Registered again over a tombstone: its seqs stay, for good now.
      op.check(telemetry).set(
        telemetry.key,
        afterTombstone(telemetry.value, telemetry.versionstamp),
      );
    } else if (telemetry.value !== null) {
      // Checked even when nothing is raised: a report applied meanwhile may have moved the
      // seq past fields it did not carry.
      op.check(telemetry);
      const superseded = supersededReports(telemetry.value);
      if (superseded !== telemetry.value) op.set(telemetry.key, superseded);
    }
    const lossRecorded = loss !== null && held.size > 0;
    if (lossRecorded) stageLeaseLoss(op, region, id, loss);
    bumpResourcesVersion(op, region);
    markWrite(op, region);
    const res = await op.commit();
    if (res.ok) {
      return {
        before: before.value,
        held: held.size,
        consistencyToken: res.versionstamp,
        lossRecorded,
      };
    }
  }
  throw new UnavailableError(
    `Cannot change resource "${id}" in region "${region}": too many concurrent changes`,
  );
}

/** A resource removal whose leases are still to be lost (keys.leaseLoss). */
export interface LeaseLoss {
  reason: string;
  /**
   * Spare leases taken after this versionstamp, when it is earlier than the record's own:
   * the resource was reported back (and that report accepted) before the removal was applied.
   */
  before?: string;
}

/**
 * Records, in the commit that takes a resource away (state gone, or deleted), that the
 * leases held on it then are to be lost. The caller loses them right after the commit
 * (finishLeaseLoss); the record lets the region's sweep chain finish the job when that
 * step fails or the process dies first (finishLeaseLosses), and its versionstamp dates the
 * removal, so a lease taken after it is spared. The commit checks that no record is left
 * (the caller finishes an earlier one first, finishRecordedLoss): one never replaces another,
 * whose leases would then end with the wrong reason, or not at all.
 */
export function stageLeaseLoss(
  op: AtomicWriter,
  region: string,
  id: string,
  reason: string,
  before?: string,
): void {
  const key = keys.leaseLoss(region, id);
  const loss: LeaseLoss = before === undefined ? { reason } : { reason, before };
  op.check({ key, versionstamp: null });
  op.set(key, loss);
}

/**
 * Loses the leases of the removal recorded at versionstamp `recordedAt`, then deletes the
 * record. Returns how many it lost and the versionstamp a token covering them must reach.
 */
export async function finishLeaseLoss(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  id: string,
  recordedAt: string,
): Promise<{ lost: number; lastCommit: string | null }> {
  const record = await kv.get<LeaseLoss>(keys.leaseLoss(region, id));
  if (record.versionstamp === recordedAt) {
    return await finishRecordedLoss(kv, clock, region, id, record);
  }
  // Another finisher (the sweep chain, a later removal) took the record, and deletes it only
  // once every lease it names is lost: a commit now comes after all those losses. It checks
  // the region, whose write mark must not outlive a deletion of it meanwhile.
  const config = await kv.get(keys.regionConfig(region));
  if (config.versionstamp === null) return { lost: 0, lastCommit: null };
  const op = kv.atomic().check(config);
  markWrite(op, region);
  const res = await op.commit();
  return { lost: 0, lastCommit: res.ok ? res.versionstamp : null };
}

/**
 * Finishes the lease losses a removal left unfinished (a crash) on these resources: before
 * another is recorded in its place (which would lose those leases with another reason, or
 * not at all), and before a resource registered anew or renewed carries them on.
 */
export async function finishUnfinishedLosses(
  kv: Deno.Kv,
  clock: Clock,
  resources: ReadonlyArray<{ region: string; id: string }>,
): Promise<void> {
  const recorded = await getAll<LeaseLoss>(
    kv,
    resources.map(({ region, id }) => keys.leaseLoss(region, id)),
  );
  for (const [i, { region, id }] of resources.entries()) {
    const unfinished = recorded[i];
    if (unfinished.versionstamp !== null) {
      await finishRecordedLoss(kv, clock, region, id, unfinished as Deno.KvEntry<LeaseLoss>);
    }
  }
}

/** Loses the leases a lease-loss record names, then deletes it (unless it changed since). */
export async function finishRecordedLoss(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  id: string,
  record: Deno.KvEntry<LeaseLoss>,
): Promise<{ lost: number; lastCommit: string | null }> {
  const { reason, before } = record.value;
  const changedAt = before !== undefined && before < record.versionstamp
    ? before
    : record.versionstamp;
  const loss = await loseLeases(kv, clock, region, id, reason, changedAt);
  // The leases are lost: a record left by a failed delete is only finished again, harmlessly.
  await kv.atomic().check(record).delete(record.key).commit().catch((error) => {
    log("warn", "a finished lease loss record could not be deleted", {
      region,
      resource: id,
      error: String(error),
    });
  });
  return loss;
}

/**
 * Finishes up to `limit` lease losses the region still records (a removal whose lease
 * loss failed or was cut short by a crash), each on its own: one that fails is retried
 * later without holding up the others. Each region's sweep chain runs it on every tick,
 * and the chain runs while the region holds any lease. Returns how many it finished.
 */
export async function finishLeaseLosses(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  limit = 10,
): Promise<number> {
  let finished = 0;
  const records = kv.list<LeaseLoss>({ prefix: keys.leaseLosses(region) }, { limit });
  for await (const record of records) {
    const id = record.key.at(-1) as string;
    try {
      await finishRecordedLoss(kv, clock, region, id, record); // as listed: no second read
      finished++;
    } catch (error) {
      log("warn", "finishing a lease loss failed; the next sweep retries", {
        region,
        resource: id,
        error: String(error),
      });
    }
  }
  return finished;
}

/**
 * Marks `lost` every live lease on a resource that was held when the change that took the
 * resource away committed (versionstamp `changedAt`), one commit each. A slot taken after
 * that commit belongs to a resource registered again since, and its lease is not this
 * change's to end. Returns how many it ended and its last commit's versionstamp (null:
 * none), which the change's consistency token must reach so that a read presenting it
 * sees those leases ended.
 */
export async function loseLeases(
  kv: Deno.Kv,
  clock: Clock,
  region: string,
  id: string,
  reason: string,
  changedAt: string,
): Promise<{ lost: number; lastCommit: string | null }> {
  let lost = 0;
  let lastCommit: string | null = null;
  for (const held of (await readHeldSlots(kv, region, id)).values()) {
    if (held.versionstamp > changedAt) continue;
    try {
      // A lease already past its expiry is expired, not lost (and not counted).
      const { consistencyToken } = await endLiveLease(kv, clock, held.value.claimId, {
        state: "lost",
        reason,
      });
      lastCommit = consistencyToken;
      lost++;
    } catch (error) {
      if (!(error instanceof LeaseLostError || error instanceof NotFoundError)) throw error;
    }
  }
  return { lost, lastCommit };
}

/** One resource as read back, or 404. */
export async function getResource(
  kv: Deno.Kv,
  region: string,
  id: string,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<Resource> {
  await getRegionConfig(kv, region, consistency);
  const [spec, telemetry] = await kv.getMany<[ResourceSpec, Telemetry]>([
    keys.resource(region, id),
    keys.telemetry(region, id),
  ], { consistency });
  if (spec.value === null) {
    throw new NotFoundError(`Resource "${id}" does not exist in region "${region}"`);
  }
  const held = await readHeldSlots(kv, region, id);
  return resourceView(region, spec.value, telemetry.value, held.size);
}

/**
 * A page of a region's resources in id order. Telemetry and held slots for the page
 * are read with one range scan each, bounded by the page's first and last ids.
 */
export async function listResources(
  kv: Deno.Kv,
  region: string,
  page: { cursor?: string; limit: number },
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<{ items: Resource[]; cursor: string | null }> {
  await getRegionConfig(kv, region, consistency);
  const { entries, cursor } = await listPage<ResourceSpec>(
    kv,
    keys.resources(region),
    `resources/${region}`,
    page,
    consistency,
  );
  const specs = entries.map((entry) => entry.value);
  if (specs.length === 0) return { items: [], cursor: null };
  const first = specs[0].id;
  const last = specs[specs.length - 1].id;
  const telemetry = new Map<string, Telemetry>();
  const claimed = new Map<string, number>();
  const range = (prefix: Deno.KvKey) => ({
    start: [...prefix, first],
    end: [...prefix, `${last}\0`],
  });
  for await (const entry of kv.list<Telemetry>(range(keys.telemetries(region)), { consistency })) {
    telemetry.set(entry.key.at(-1) as string, entry.value);
  }
  for await (const entry of kv.list(range(keys.allSlots(region)), { consistency })) {
    const id = entry.key.at(-2) as string;
    claimed.set(id, (claimed.get(id) ?? 0) + 1);
  }
  const items = specs.map((spec) =>
    resourceView(region, spec, telemetry.get(spec.id) ?? null, claimed.get(spec.id) ?? 0)
  );
  return { items, cursor };
}
