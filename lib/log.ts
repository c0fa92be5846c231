/** Structured logs: one JSON object per line on stdout/stderr, easy to ship and query. */

type Level = "debug" | "info" | "warn" | "error";

/** Writes `{time, level, msg, ...fields}` as one JSON line (errors and warnings to stderr). */
export function log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
  const line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields });
  if (level === "error" || level === "warn") console.error(line);
  else console.log(line);
}
