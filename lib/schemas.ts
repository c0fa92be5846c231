/**
 * The zod schemas that validate every request and describe every answer. Routes
 * declare them with `@hono/zod-openapi`, so `/openapi.json` is generated from the
 * code that runs. Bounds keep every key under 2,048 bytes and every value under 64 KiB.
 */
import { z } from "@hono/zod-openapi";

/** Bounds that keep keys and values inside Deno KV's limits; documented in the README. */
export const LIMITS = {
  regionName: 32,
  resourceId: 128,
  labels: 16,
  labelKey: 63,
  labelValue: 256,
  /**
   * Characters of a label map's keys and values together. Every free slot's index entry
   * carries its resource's labels, so a label change rewrites up to 64 of them: this keeps
   * that write small (64 KiB at most) however a caller fills the map.
   */
  labelChars: 1024,
  slots: 64,
  holder: 256,
  idempotencyKey: 256,
  reason: 512,
  pageSize: 1000,
} as const;

export const RegionName = z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/, {
  message: "must be 1-32 characters of a-z, 0-9 and '-', starting with a letter or digit",
}).openapi({ example: "iad" });

export const ResourceId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, {
  message: "must be 1-128 characters of A-Z, a-z, 0-9 and '._:-', starting with a letter or digit",
}).openapi({ example: "chrome-0001" });

const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;

/**
 * The generator drops a record's key schema and refinements: the document states both.
 * (`propertyNames` is OpenAPI 3.1, which the metadata type, written for 3.0, lacks.)
 */
function labelsDoc() {
  return {
    propertyNames: { type: "string", pattern: LABEL_KEY.source },
    maxProperties: LIMITS.labels,
    description:
      `At most ${LIMITS.labels} labels, keys of 1-${LIMITS.labelKey} characters, values of at most ${LIMITS.labelValue}, and ${
        LIMITS.labelChars.toLocaleString("en-US")
      } characters of keys and values together (a resource stored before that last bound may carry more).`,
    example: { browser: "chromium" },
  };
}

/**
 * A label map as every version has accepted it. Queued status messages are read with it,
 * so that a message accepted before the character bound below is applied, not dead-lettered.
 */
const LabelMap = z.record(
  z.string().regex(LABEL_KEY, {
    message: "label keys are 1-63 characters of A-Z, a-z, 0-9 and '._/-'",
  }),
  z.string().max(LIMITS.labelValue),
).refine((labels) => Object.keys(labels).length <= LIMITS.labels, {
  message: `at most ${LIMITS.labels} labels`,
});

export const Labels = LabelMap.refine(
  (labels) =>
    Object.entries(labels).reduce((sum, [key, value]) => sum + key.length + value.length, 0) <=
      LIMITS.labelChars,
  {
    message: `must hold at most ${
      LIMITS.labelChars.toLocaleString("en-US")
    } characters of keys and values together`,
  },
).openapi(labelsDoc());
export type Labels = z.infer<typeof Labels>;

export const ResourceState = z.enum(["ready", "draining", "gone"]);
export type ResourceState = z.infer<typeof ResourceState>;

/**
 * Any positive integer, however large (zod's `int()` stops at 2^53; its `multipleOf(1)` lets
 * 4.000000000000001 through): leases longer than a region allows, and limits beyond
 * LEASE_CEILING_MS, are clamped where used, not refused.
 */
const PositiveMs = z.number().positive().refine(Number.isInteger, "must be an integer");
/** How the document shows PositiveMs: an `.openapi` that sets the type drops the generated rest. */
const INTEGER_MS = { type: "integer", exclusiveMinimum: 0 } as const;
/** A PositiveMs with a default, documented. */
const msDefaulting = (ms: number) => PositiveMs.default(ms).openapi({ ...INTEGER_MS, default: ms });

export const RegionInput = z.strictObject({
  backup: RegionName.nullable().default(null).openapi({
    description: "Region whose pool serves new claims while this one lags; never itself.",
  }),
  lag: z.strictObject({
    enterMs: msDefaulting(2000),
    exitMs: msDefaulting(500),
  }).default({ enterMs: 2000, exitMs: 500 }).refine((lag) => lag.exitMs < lag.enterMs, {
    message: "must be less than lag.enterMs",
    path: ["exitMs"],
  }),
  lease: z.strictObject({
    defaultMs: msDefaulting(60_000),
    maxMs: msDefaulting(3_600_000),
  }).default({ defaultMs: 60_000, maxMs: 3_600_000 }).refine(
    (lease) => lease.defaultMs <= lease.maxMs,
    { message: "must not exceed lease.maxMs", path: ["defaultMs"] },
  ),
}).openapi("RegionInput");
export type RegionInput = z.infer<typeof RegionInput>;
/**
 * A region's stored configuration. `createdAt` dates its first mode ("created") until the
 * mode first changes; configurations stored before it existed lack it.
 */
export type RegionConfig = RegionInput & { name: string; updatedAt: number; createdAt?: number };

export const ResourceInput = z.strictObject({
  slots: z.number().int().min(1).max(LIMITS.slots).default(1),
  labels: Labels.default({}),
  state: ResourceState.default("ready"),
}).openapi("ResourceInput");
export type ResourceInput = z.infer<typeof ResourceInput>;

export const Resource = z.object({
  id: ResourceId,
  region: RegionName,
  slots: z.number().int(),
  labels: Labels,
  state: ResourceState,
  seq: z.number().int().openapi({ description: "Last applied status sequence number (0: none)." }),
  load: z.number().nullable(),
  claimed: z.number().int().openapi({
    description:
      "Slots held by leases, counting one that ran out until its expiry is recorded (within about a second).",
  }),
  updatedAt: z.string().datetime(),
}).openapi("Resource");
export type Resource = z.infer<typeof Resource>;

export const ClaimInput = z.strictObject({
  holder: z.string().min(1).max(LIMITS.holder).openapi({ example: "worker-7" }),
  leaseMs: PositiveMs.optional().openapi({
    ...INTEGER_MS,
    description: "Requested lease; clamped to the region's lease.maxMs.",
  }),
  labels: Labels.optional().openapi({ description: "Only resources carrying all these labels." }),
}).openapi("ClaimInput");
export type ClaimInput = z.infer<typeof ClaimInput>;

export const ClaimState = z.enum(["active", "released", "expired", "lost"]);
export type ClaimState = z.infer<typeof ClaimState>;

export const FencingToken = z.string().regex(/^[0-9a-f]{24}$/).openapi({
  description: "Strictly increasing per resource across claims; compare as strings (fixed width).",
  example: "00000000000004d20000" + "0000",
});

export const Claim = z.object({
  id: z.string(),
  region: RegionName,
  servedBy: RegionName,
  resource: ResourceId,
  slot: z.number().int(),
  holder: z.string(),
  state: ClaimState,
  fencingToken: FencingToken,
  leaseMs: z.number().int(),
  createdAt: z.string().datetime(),
  leaseExpiresAt: z.string().datetime(),
  endedAt: z.string().datetime().nullable(),
  reason: z.string().nullable(),
}).openapi("Claim");
export type Claim = z.infer<typeof Claim>;

export const ConsistencyToken = z.string().regex(/^[0-9a-f]{20}$/).openapi({
  description:
    "Versionstamp of a write. Present it as `Allot-Consistency-Token` to read your own writes.",
  example: "00000000000004d20000",
});

export const RegionMode = z.enum(["primary", "fallback"]);
export type RegionMode = z.infer<typeof RegionMode>;

export const ClaimGrant = Claim.extend({
  mode: RegionMode.openapi({ description: "The asked region's mode when the claim was routed." }),
  lagMs: z.number().int().openapi({
    description: "Status lag of the serving region when routed: how stale its pool view may be.",
  }),
  note: z.string().nullable().openapi({
    description:
      "Set when fallback was refused (backup lagging, exhausted or in fallback) while the region lagged past lag.enterMs or was in fallback, and why: the least stale pool served.",
  }),
  secret: z.string().openapi({
    description: "Shown once (and on an idempotent replay): required by renew and release.",
  }),
  consistencyToken: ConsistencyToken,
}).openapi("ClaimGrant");
export type ClaimGrant = z.infer<typeof ClaimGrant>;

export const RenewInput = z.strictObject({
  leaseMs: PositiveMs.optional().openapi(INTEGER_MS),
}).openapi("RenewInput");
export const RevokeInput = z.strictObject({
  reason: z.string().min(1).max(LIMITS.reason),
}).openapi("RevokeInput");

export const Problem = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  field: z.string().optional(),
  errors: z.array(z.object({ field: z.string(), message: z.string() })).optional().openapi({
    description:
      "The offending inputs, the first 20 of them; `detail` names the first 5 and counts the rest.",
  }),
}).openapi("Problem");

export const ModeChange = z.object({
  at: z.string().datetime(),
  from: RegionMode,
  to: RegionMode,
  reason: z.string(),
  lagMs: z.number().int(),
}).openapi("ModeChange");

export const RegionView = z.object({
  name: RegionName,
  backup: RegionName.nullable(),
  lag: z.object({ enterMs: z.number().int(), exitMs: z.number().int() }),
  lease: z.object({ defaultMs: z.number().int(), maxMs: z.number().int() }),
  updatedAt: z.string().datetime(),
  mode: RegionMode,
  modeSince: z.string().datetime(),
  modeReason: z.string(),
  modeHistory: z.array(ModeChange).openapi({ description: "Recent mode changes, oldest first." }),
  lagMs: z.number().int().openapi({
    description: "Age of the oldest status update not yet applied.",
  }),
  pending: z.number().int().openapi({
    description: "Status updates enqueued but not yet applied.",
  }),
  deadLettered: z.number().int().openapi({
    description:
      "Status updates whose message exhausted its retries (dead letters), since the region was created: discarding a dead letter does not lower it.",
  }),
  total: z.number().int().openapi({ description: "Slots of all resources not gone." }),
  free: z.number().int().openapi({ description: "Slots that can be claimed now." }),
  claimed: z.number().int().openapi({
    description:
      "Slots held by leases, counting one that ran out until its expiry is recorded (within about a second).",
  }),
}).openapi("Region");
export type RegionView = z.infer<typeof RegionView>;

/** Most updates one status request may carry. */
export const MAX_STATUS_UPDATES = 1000;

const statusUpdate = (labels: typeof LabelMap) =>
  z.strictObject({
    resource: ResourceId,
    seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).openapi({
      description:
        "Per-resource sequence number, increasing with each report: each field (state, slots, labels, load) takes the value of the highest-seq update that carried it, so an update changes only the fields it carries whose value came from a lower seq. A PUT of the resource counts as newer than every report applied before it.",
    }),
    state: ResourceState,
    slots: z.number().int().min(1).max(LIMITS.slots).optional(),
    labels: labels.optional(),
    load: z.number().min(0).max(1e12).optional(),
  });
export const StatusUpdate = statusUpdate(Labels).openapi("StatusUpdate");
export type StatusUpdate = z.infer<typeof StatusUpdate>;
/** A status update as queued by this or an earlier version (see LabelMap). */
export const QueuedStatusUpdate = statusUpdate(LabelMap);

export const StatusBatch = z.strictObject({
  updates: z.array(StatusUpdate).min(1).max(MAX_STATUS_UPDATES),
}).openapi("StatusBatch");
export type StatusBatch = z.infer<typeof StatusBatch>;

/** A status message's id (a ULID as allot writes them; bounded for any other writer's). */
export const MessageId = z.string().regex(/^[0-9A-Za-z._-]{1,64}$/, {
  message: "must be 1-64 characters of A-Z, a-z, 0-9 and '._-'",
}).openapi({ example: "01JDKQ3V8M6Y2G5T7R9W0XCPHN" });

/** Most resources a dead letter's summary names. */
export const DEAD_LETTER_RESOURCES = 20;

export const DeadLetterSummary = z.object({
  id: MessageId,
  readable: z.boolean().openapi({
    description:
      "False for a message this version cannot read (say, one a newer version wrote); it can still be discarded.",
  }),
  enqueuedAt: z.string().nullable().openapi({
    description: "When it was accepted (null: unreadable).",
  }),
  updateCount: z.number().int().nullable(),
  resources: z.array(ResourceId).openapi({
    description:
      `The resources it reports on, in order of first mention: at most ${DEAD_LETTER_RESOURCES}.`,
  }),
}).openapi("DeadLetterSummary");
export type DeadLetterSummary = z.infer<typeof DeadLetterSummary>;

export const DeadLetter = DeadLetterSummary.extend({
  updates: z.array(StatusUpdate).nullable().openapi({
    description: "Its updates, as accepted (null: unreadable).",
  }),
  problem: z.string().nullable().openapi({
    description: "Why this version cannot read it (null: readable).",
  }),
}).openapi("DeadLetter");
export type DeadLetter = z.infer<typeof DeadLetter>;
