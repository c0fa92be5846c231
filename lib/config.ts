/**
 * Process configuration, read once from the environment through a zod schema.
 * A bad value stops start-up with a message that names the variable.
 */
import { z } from "zod";
import { RegionName } from "./schemas.ts";

export const Role = z.enum(["admin", "agent", "client"]);
export type Role = z.infer<typeof Role>;

export const TokenSpec = z.strictObject({
  token: z.string().min(16, "tokens must be at least 16 characters").max(512).regex(
    /^[\x21-\x7e]+$/,
    "tokens are printable ASCII without spaces (they travel as `Bearer <token>`)",
  ),
  role: Role,
  regions: z.array(RegionName).min(1).optional(),
});
export type TokenSpec = z.infer<typeof TokenSpec>;

const Env = z.object({
  // An empty PORT (`PORT=`) is unset, as for ALLOT_TOKENS: coercing it would give 0, a random
  // port. Only decimal digits: Number() would also take `0x1F40`, `1e3` or ` 80 `.
  PORT: z.preprocess(
    (raw) => (typeof raw === "string" && raw.trim() === "" ? undefined : raw),
    z.string().regex(/^\d{1,5}$/, "must be a port number (decimal digits)").optional()
      .transform((raw) => raw === undefined ? 8000 : Number(raw))
      .pipe(z.number().int().min(0).max(65535)),
  ),
  // Deno reads `file:…` as a path or, under --allow-all, as a SQLite URI naming another
  // file: which file would be the store, and be locked (kv_file.ts), depends on the flags.
  ALLOT_KV: z.string().min(1).refine((raw) => !raw.startsWith("file:"), {
    error: "a `file:` URI names different files under different permissions: give a path",
  }).transform((raw) => raw.replace(/^https?:\/\//i, (scheme) => scheme.toLowerCase()))
    .optional(),
  ALLOT_TOKENS: z.string().optional().transform((raw, ctx) => {
    if (raw === undefined || raw.trim() === "") return [];
    try {
      return JSON.parse(raw) as unknown;
    } catch {
      ctx.addIssue({ code: "custom", message: "is not valid JSON" });
      return z.NEVER;
    }
  }).pipe(z.array(TokenSpec)),
  /** Set by Deno Deploy: there, many isolates serve one KV. */
  DENO_DEPLOYMENT_ID: z.string().optional(),
  // Deno reads it itself (true or false, in any case) and, on any other value, only warns
  // and exports nothing: an operator who asked for telemetry would find none. Empty is unset.
  OTEL_DENO: z.preprocess(
    (raw) => (typeof raw !== "string" ? raw : raw.trim() === "" ? undefined : raw.toLowerCase()),
    z.enum(["true", "false"], { error: 'must be "true" or "false"' }).optional(),
  ),
});

/** The settings every deployment needs; see the README's configuration table. */
export interface Config {
  port: number;
  /** A file path, `:memory:`, or a KV Connect URL; undefined: `Deno.openKv()`'s default. */
  kvPath?: string;
  tokens: TokenSpec[];
}

/** Thrown when the environment is unusable; its message names the variable. */
export class ConfigError extends Error {}

/** Parses the environment, failing fast with e.g. `ALLOT_TOKENS[0].role: ...`. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const parsed = Env.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => {
      const [name, ...rest] = issue.path;
      const where = rest.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("");
      return `${String(name)}${where}: ${issue.message}`;
    });
    throw new ConfigError(`Invalid configuration: ${lines.join("; ")}`);
  }
  const tokens = parsed.data.ALLOT_TOKENS;
  if (tokens.length === 0 && parsed.data.DENO_DEPLOYMENT_ID) {
    // A generated admin token lives in one process: each isolate would make its own.
    throw new ConfigError(
      "Invalid configuration: ALLOT_TOKENS: required on Deno Deploy, where each isolate would generate its own admin token",
    );
  }
  const seen = new Set<string>();
  for (const spec of tokens) {
    if (seen.has(spec.token)) {
      throw new ConfigError("Invalid configuration: ALLOT_TOKENS repeats a token");
    }
    seen.add(spec.token);
  }
  return { port: parsed.data.PORT, kvPath: parsed.data.ALLOT_KV, tokens };
}

/** Reads the process environment (only the variables allot uses). */
export function loadConfigFromEnv(): Config {
  const names = ["PORT", "ALLOT_KV", "ALLOT_TOKENS", "DENO_DEPLOYMENT_ID", "OTEL_DENO"];
  return loadConfig(Object.fromEntries(names.map((name) => [name, Deno.env.get(name)])));
}
