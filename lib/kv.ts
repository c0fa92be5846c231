/** Small Deno KV helpers shared by lib/ modules. */
import { within } from "./in_flight.ts";
import type { AtomicWriter } from "./atomic.ts";
import { encodeBase64Url } from "./base64.ts";
import { BadRequestError } from "./errors.ts";
import { type CounterName, keys } from "./keys.ts";

const U64 = 2n ** 64n;

/** Adds `delta` (possibly negative) to a region counter without reading it: `sum` wraps mod 2^64. */
export function addCounter(
  op: AtomicWriter,
  region: string,
  name: CounterName,
  delta: number,
): void {
  if (delta === 0) return;
  const value = delta > 0 ? BigInt(delta) : U64 + BigInt(delta);
  op.sum(keys.counter(region, name), value);
}

/** A counter's value as a signed number. */
export function counterValue(entry: Deno.KvEntryMaybe<unknown>): number {
  if (!(entry.value instanceof Deno.KvU64)) return 0;
  const raw = entry.value.value;
  return Number(raw >= U64 / 2n ? raw - U64 : raw);
}

/** Marks a write to these regions, so reads can tell whether a replica has seen it. */
export function markWrite(op: AtomicWriter, ...regions: string[]): void {
  for (const region of new Set(regions)) op.set(keys.writeMark(region), true);
}

/** Marks a write to a spec or telemetry of the region (keys.resourcesVersion): once a commit. */
export function bumpResourcesVersion(op: AtomicWriter, region: string): void {
  op.set(keys.resourcesVersion(region), true);
}

/**
 * What Deno KV says when it cannot serve now: its handle closed under a call in flight;
 * SQLite busy, out of disk or unable to open its file; or a KV Connect server asking to be
 * called later (429, 408: Deno retries 5xx and lost connections itself, without end). Other
 * refusals (400, 401, 413...) would fail again however long the caller waits: they stay 500s.
 */
const STORE_DOWN =
  /database is closed|database (table )?is locked|database or disk is full|disk I\/O error|unable to open database|^KV Connect failed to call .*\(status=(429|408)\b/i;

/** Whether an error is the KV handle being closed (a shutdown): it never serves again. */
export function isStoreClosed(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    (error instanceof Error && /database is closed/i.test(error.message));
}

/**
 * Whether an error is the store failing rather than allot: its handle closed (a shutdown),
 * SQLite unable to serve, or a KV Connect server asking to be called later. The request may
 * succeed if retried, so it is a 503, not a 500.
 */
export function isStoreUnavailable(error: unknown): boolean {
  return isStoreClosed(error) || (error instanceof Error && STORE_DOWN.test(error.message));
}

/** How long readiness waits for the store: a load balancer's probe gives up about then. */
export const READINESS_TIMEOUT_MS = 2_000;

/**
 * Whether the store answers a strong read within `timeoutMs` (readiness): false when it
 * cannot serve, and when it is too slow to (a KV Connect server that stalls, say). A read
 * says nothing of writes: a full disk or a file another program holds locked for writing
 * still reads.
 */
export async function storeAnswers(
  kv: Deno.Kv,
  timeoutMs = READINESS_TIMEOUT_MS,
): Promise<boolean> {
  try {
    return await within(kv.get(keys.readinessProbe()).then(() => true), timeoutMs, false);
  } catch {
    return false;
  }
}

/** Reads any number of keys, 10 at a time (Deno KV's getMany limit), strongly. */
export async function getAll<T>(
  kv: Deno.Kv,
  keyList: readonly Deno.KvKey[],
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<Deno.KvEntryMaybe<T>[]> {
  const chunks: Promise<Deno.KvEntryMaybe<T>[]>[] = [];
  for (let i = 0; i < keyList.length; i += 10) {
    chunks.push(kv.getMany<T[]>(keyList.slice(i, i + 10), { consistency }));
  }
  return (await Promise.all(chunks)).flat();
}

/** Reads a whole prefix into an array (for small, bounded prefixes only). */
export async function listAll<T>(
  kv: Deno.Kv,
  prefix: Deno.KvKey,
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<Deno.KvEntry<T>[]> {
  const out: Deno.KvEntry<T>[] = [];
  for await (const entry of kv.list<T>({ prefix }, { consistency })) out.push(entry);
  return out;
}

/**
 * Deno KV throws a TypeError on a list cursor it cannot decode ("invalid cursor", or
 * "expected: latin1" for characters past U+00FF): that is the caller's mistake, so it
 * becomes a 400 naming `cursor`. Any other error is returned as is.
 */
export function cursorError(error: unknown): unknown {
  if (!(error instanceof TypeError) || !/cursor|latin1/i.test(error.message)) return error;
  return foreignCursor();
}

function foreignCursor(): BadRequestError {
  return new BadRequestError("Invalid query: cursor is not one this listing returned", [
    { field: "cursor", message: "is not one this listing returned" },
  ]);
}

/**
 * A page cursor that names its listing (`listing`, e.g. `claims/iad`) before Deno KV's
 * cursor, which encodes only a key's part past the listed prefix: one from another
 * region's listing would otherwise be taken for a position in this one.
 */
export function pageCursor(listing: string, kvCursor: string): string {
  return `${encodeBase64Url(new TextEncoder().encode(listing))}.${kvCursor}`;
}

/**
 * Up to `page.limit` entries of `prefix`, from the page cursor of `listing` on (400 for a
 * cursor of another listing), with the page cursor of the next page (null: no more).
 */
export async function listPage<T>(
  kv: Deno.Kv,
  prefix: Deno.KvKey,
  listing: string,
  page: { cursor?: string; limit: number },
  consistency: Deno.KvConsistencyLevel = "strong",
): Promise<{ entries: Deno.KvEntry<T>[]; cursor: string | null }> {
  const iter = kv.list<T>({ prefix }, {
    cursor: kvCursorOf(listing, page.cursor),
    limit: page.limit,
    consistency,
  });
  const entries: Deno.KvEntry<T>[] = [];
  try {
    for await (const entry of iter) entries.push(entry);
  } catch (error) {
    throw cursorError(error);
  }
  if (entries.length < page.limit) return { entries, cursor: null };
  return { entries, cursor: await nextPageCursor(kv, listing, prefix, iter.cursor, consistency) };
}

/**
 * The page cursor of `listing` past the Deno KV cursor `after`, or null when `prefix` holds
 * no key past it: a full page asks, so the last page answers `cursor: null` rather than
 * sending its reader to an empty one. (Listing one entry more instead would make Deno fetch
 * a whole extra batch of up to 500.)
 */
export async function nextPageCursor(
  kv: Deno.Kv,
  listing: string,
  prefix: Deno.KvKey,
  after: string,
  consistency: Deno.KvConsistencyLevel,
): Promise<string | null> {
  return await anyUnder(kv, prefix, { cursor: after, consistency })
    ? pageCursor(listing, after)
    : null;
}

/** Whether `prefix` holds any key (past the Deno KV cursor `options.cursor`, when given). */
export async function anyUnder(
  kv: Deno.Kv,
  prefix: Deno.KvKey,
  options: { cursor?: string; consistency?: Deno.KvConsistencyLevel } = {},
): Promise<boolean> {
  const next = kv.list({ prefix }, { ...options, limit: 1 });
  return !(await next.next()).done;
}

/** The Deno KV cursor in a page cursor of `listing` (see pageCursor); 400 for another's. */
export function kvCursorOf(listing: string, cursor: string | undefined): string | undefined {
  if (cursor === undefined) return undefined;
  const prefix = pageCursor(listing, "");
  if (!cursor.startsWith(prefix) || cursor.length === prefix.length) throw foreignCursor();
  return cursor.slice(prefix.length);
}

/**
 * Counter deltas and written regions gathered over one commit and written once each:
 * a group commit of 40 claims then carries 2 sums and 1 write mark, not 120 mutations.
 */
export class CommitEffects {
  #counters = new Map<string, { region: string; name: CounterName; delta: number }>();
  #regions = new Set<string>();

  /** Adds `delta` to a region counter at flush. */
  count(region: string, name: CounterName, delta: number): void {
    const key = `${region}\u0000${name}`;
    const entry = this.#counters.get(key) ?? { region, name, delta: 0 };
    entry.delta += delta;
    this.#counters.set(key, entry);
  }

  /** Marks the regions written, for read-your-writes. */
  touch(...regions: string[]): void {
    for (const region of regions) this.#regions.add(region);
  }

  /** Writes the gathered effects into `op`. */
  flush(op: AtomicWriter): void {
    for (const { region, name, delta } of this.#counters.values()) {
      addCounter(op, region, name, delta);
    }
    markWrite(op, ...this.#regions);
  }
}
