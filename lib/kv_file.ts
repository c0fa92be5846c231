/**
 * One process owns one KV file (SPEC, "Deno KV facts"): a second handle on it, from this
 * process or another, makes commits fail with `database is locked` under load. So the
 * owner holds an advisory lock on the file for as long as it runs, and a second allot on
 * the same file stops at start-up instead of failing claims. The kernel drops the lock
 * when the process ends, however it ends (kill -9 included): there is no stale lock.
 */

/** Thrown when another handle holds the KV file's lock. */
export class KvFileInUseError extends Error {}

/**
 * The local file ALLOT_KV names, or null for `:memory:`, a KV Connect URL, or Deno's
 * default (whose path Deno derives itself, so it is not locked). Deno tells URLs apart
 * case-sensitively; `file:…`, which Deno may hand SQLite as a URI, config refuses.
 */
export function localKvFile(kvPath: string | undefined): string | null {
  if (kvPath === undefined || kvPath === ":memory:") return null;
  return /^https?:\/\//i.test(kvPath) ? null : kvPath;
}

/**
 * Takes the lock of the KV file at `path` for the life of the process (creating the file,
 * which SQLite reads as an empty database), or throws KvFileInUseError. The lock is
 * `flock`'s, which SQLite's own (POSIX) locks on the same file ignore. Returns null on
 * Windows, where Deno's lock is mandatory and would lock SQLite itself out.
 */
export async function lockKvFile(path: string): Promise<Deno.FsFile | null> {
  if (Deno.build.os === "windows") return null;
  const file = await Deno.open(path, { read: true, write: true, create: true });
  if (await file.tryLock(true)) return file;
  file.close();
  throw new KvFileInUseError(
    `ALLOT_KV: ${
      JSON.stringify(path)
    } is in use by another process (one process owns one KV file: stop the other, or give this one another file)`,
  );
}

/**
 * ALLOT_KV as it may be printed: a KV Connect URL without its user and password, however it
 * is written (spaces around it, one slash after the scheme, quotes, spaces or `/` in the
 * password).
 */
export function redactedKv(kvPath: string): string {
  const scheme = kvPath.match(/^\s*https?:\/*/i)?.[0];
  if (scheme === undefined) return kvPath;
  const rest = kvPath.slice(scheme.length);
  const url = URL.canParse(kvPath.trim()) ? new URL(kvPath.trim()) : null;
  if (url !== null && url.username === "" && url.password === "") return kvPath;
  // A URL that parses has no `/` before its host: mask up to the last `@` before its path.
  // One that does not may have one in its password: mask up to the last `@` of all (a
  // hidden path is better than a printed password).
  const authority = url === null ? rest : rest.split("/")[0];
  const at = authority.lastIndexOf("@");
  return at === -1 ? kvPath : `${scheme}***${rest.slice(at)}`;
}

/**
 * A message about ALLOT_KV as it may be printed: without the URL's user and password,
 * also where Deno's own error spells the URL its own way (host in lower case, port and
 * path tidied, the password percent-encoded), and in any other http(s) URL it names.
 */
export function withoutKvCredentials(message: string, kvPath: string): string {
  let text = message.replaceAll(kvPath, redactedKv(kvPath));
  if (URL.canParse(kvPath)) {
    const { href } = new URL(kvPath);
    text = text.replaceAll(href, redactedKv(href));
  }
  return text.replace(/\b(https?:\/\/)[^\s/@]*@/gi, "$1***@");
}
