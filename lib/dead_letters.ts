/**
 * Status messages the queue gave up on (dead letters), for operators: listed, read, and
 * discarded once dealt with. A dead letter is the message as it was enqueued, so one that
 * a newer version wrote may be unreadable here: it is listed as such, and can be discarded.
 */
import { NotFoundError, UnavailableError } from "./errors.ts";
import { keys } from "./keys.ts";
import { listPage, markWrite } from "./kv.ts";
import { type PendingMessage, stageRetirement } from "./lag.ts";
import { StatusBatchMessage, whyUnreadable } from "./queue.ts";
import { getRegionConfig } from "./regions.ts";
import { DEAD_LETTER_RESOURCES, type DeadLetter, type DeadLetterSummary } from "./schemas.ts";

/** The largest time a Date holds (ms either side of 1970). */
const MAX_DATE_MS = 8.64e15;
/** Most dead letters one page lists. */
export const MAX_PAGE = 100;
/** Conflicting commits a discard survives (a lag read retiring the same entry, say). */
const MAX_DISCARD_ATTEMPTS = 8;

/** A page of the region's dead letters, oldest id first, without their updates. */
export async function listDeadLetters(
  kv: Deno.Kv,
  region: string,
  page: { cursor?: string; limit: number },
): Promise<{ items: DeadLetterSummary[]; cursor: string | null }> {
  await getRegionConfig(kv, region);
  // Each may hold 1,000 updates (up to 64 KiB): a page reads at most MAX_PAGE of them (and,
  // when full, one more to learn whether another page follows).
  const { entries, cursor } = await listPage<unknown>(
    kv,
    keys.deadLetters(region),
    `dead-letters/${region}`,
    { cursor: page.cursor, limit: Math.min(page.limit, MAX_PAGE) },
  );
  const items = entries.map((entry) => {
    const { updates: _updates, problem: _problem, ...summary } = view(entry);
    return summary;
  });
  return { items, cursor };
}

/** One dead letter with its updates, or 404. */
export async function getDeadLetter(
  kv: Deno.Kv,
  region: string,
  id: string,
): Promise<DeadLetter> {
  await getRegionConfig(kv, region);
  return view(await readLetter(kv, region, id));
}

/**
 * Deletes a dead letter, and retires its pending entry if no lag read has yet (in the same
 * commit: without its dead letter, that entry would hold the region's lag up for ever).
 * Returns the commit's versionstamp, the consistency token.
 */
export async function discardDeadLetter(
  kv: Deno.Kv,
  region: string,
  id: string,
): Promise<string> {
  await getRegionConfig(kv, region);
  for (let attempt = 0; attempt < MAX_DISCARD_ATTEMPTS; attempt++) {
    const letter = await readLetter(kv, region, id);
    // Once retired (or never found), a pending entry cannot come back: only ingest writes one.
    const pending = await pendingEntry(kv, region, id, enqueuedAtOf(letter.value));
    const op = kv.atomic().check(letter).delete(letter.key);
    if (pending) stageRetirement(op, region, [pending]);
    markWrite(op, region);
    const res = await op.commit();
    if (res.ok) return res.versionstamp;
  }
  throw new UnavailableError(
    `Cannot discard dead letter "${id}" in region "${region}": too many concurrent changes`,
  );
}

async function readLetter(kv: Deno.Kv, region: string, id: string) {
  const letter = await kv.get<unknown>(keys.deadLetter(region, id));
  if (letter.versionstamp === null) {
    throw new NotFoundError(`Dead letter "${id}" does not exist in region "${region}"`);
  }
  return letter;
}

function enqueuedAtOf(value: unknown): number | null {
  const at = (value as { enqueuedAt?: unknown } | null)?.enqueuedAt;
  return typeof at === "number" && Number.isSafeInteger(at) ? at : null;
}

/**
 * The message's pending entry, or null once retired. One whose dead letter does not say
 * when it was enqueued is looked for in the whole pending index: rare, and bounded by the
 * backlog cap.
 */
async function pendingEntry(
  kv: Deno.Kv,
  region: string,
  id: string,
  enqueuedAt: number | null,
): Promise<Deno.KvEntry<PendingMessage> | null> {
  if (enqueuedAt !== null) {
    const entry = await kv.get<PendingMessage>(keys.pending(region, enqueuedAt, id));
    return entry.versionstamp === null ? null : entry;
  }
  for await (const entry of kv.list<PendingMessage>({ prefix: keys.pendingIndex(region) })) {
    if (entry.key.at(-1) === id) return entry;
  }
  return null;
}

function view(entry: Deno.KvEntry<unknown>): DeadLetter {
  const id = entry.key.at(-1) as string;
  const parsed = StatusBatchMessage.safeParse(entry.value);
  if (!parsed.success) {
    return {
      id,
      readable: false,
      enqueuedAt: null,
      updateCount: null,
      resources: [],
      updates: null,
      problem: whyUnreadable(parsed.error),
    };
  }
  const { enqueuedAt, updates } = parsed.data;
  return {
    id,
    readable: true,
    enqueuedAt: Math.abs(enqueuedAt) <= MAX_DATE_MS ? new Date(enqueuedAt).toISOString() : null,
    updateCount: updates.length,
    resources: [...new Set(updates.map((u) => u.resource))].slice(0, DEAD_LETTER_RESOURCES),
    updates,
    problem: null,
  };
}
