/**
 * An atomic operation recorded before it is sent, so a batch can be measured
 * against Deno KV's per-atomic limits and split before it is committed.
 */
import { serialize } from "node:v8";

/**
 * Deno KV's limits on one atomic operation, with a margin for encoding overhead: checks,
 * mutations, total bytes (819,200 in Deno KV) and the bytes of the keys it writes (81,920).
 */
export const ATOMIC_LIMITS = {
  checks: 100,
  mutations: 1000,
  bytes: 760_000,
  keyBytes: 76_000,
} as const;

/** The part of Deno.AtomicOperation that planning code writes to (both it and AtomicPlan fit). */
export interface AtomicWriter {
  check(...checks: Deno.AtomicCheck[]): unknown;
  set(key: Deno.KvKey, value: unknown, options?: { expireIn?: number }): unknown;
  delete(key: Deno.KvKey): unknown;
  sum(key: Deno.KvKey, n: bigint): unknown;
}

type Step = (op: Deno.AtomicOperation) => void;

/**
 * Records checks and mutations, counting what Deno KV limits. As Deno KV counts them, a
 * set's (or sum's) key counts twice toward the total and once toward the keys written.
 */
export class AtomicPlan implements AtomicWriter {
  checks = 0;
  mutations = 0;
  bytes = 0;
  keyBytes = 0;
  #steps: Step[] = [];

  check(...checks: Deno.AtomicCheck[]): this {
    this.checks += checks.length;
    for (const c of checks) this.bytes += keySize(c.key);
    this.#steps.push((op) => op.check(...checks));
    return this;
  }

  set(key: Deno.KvKey, value: unknown, options?: { expireIn?: number }): this {
    this.mutations++;
    this.#written(key, encodedSize(value));
    this.#steps.push((op) => op.set(key, value, options));
    return this;
  }

  delete(key: Deno.KvKey): this {
    this.mutations++;
    this.bytes += keySize(key);
    this.#steps.push((op) => op.delete(key));
    return this;
  }

  sum(key: Deno.KvKey, n: bigint): this {
    this.mutations++;
    this.#written(key, 8);
    this.#steps.push((op) => op.sum(key, n));
    return this;
  }

  #written(key: Deno.KvKey, valueBytes: number): void {
    const size = keySize(key);
    this.bytes += 2 * size + valueBytes;
    this.keyBytes += size;
  }

  /** Whether this plan fits in one atomic operation. */
  fits(): boolean {
    return this.overflow() <= 1;
  }

  /** How many times over the tightest limit this plan is (> 1 when it does not fit). */
  overflow(): number {
    return Math.max(
      this.checks / ATOMIC_LIMITS.checks,
      this.mutations / ATOMIC_LIMITS.mutations,
      this.bytes / ATOMIC_LIMITS.bytes,
      this.keyBytes / ATOMIC_LIMITS.keyBytes,
    );
  }

  /** Sends the recorded steps as one atomic operation. */
  commit(kv: Deno.Kv): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
    const op = kv.atomic();
    for (const step of this.#steps) step(op);
    return op.commit();
  }
}

/**
 * The bytes Deno KV counts for a value, which it stores in V8's encoding. For text that is
 * all Latin-1 that is about JSON's length; a string holding a character above U+00FF (or
 * a lone surrogate, which JSON escapes as ASCII) is stored at two bytes a character, so
 * such values, rare here, are measured exactly (V8's serializer costs ~50 µs a call in
 * Deno, JSON ~1). Bigints count 20 digits.
 */
export function encodedSize(value: unknown): number {
  const json = jsonOf(value);
  return WIDE.test(json) || ESCAPED_SURROGATE.test(json) ? serialize(value).length : json.length;
}

/** An upper bound on the bytes Deno KV counts for a key: keys are UTF-8. */
function keySize(key: Deno.KvKey): number {
  const json = jsonOf(key);
  return NON_ASCII.test(json) ? utf8.encode(json).length : json.length;
}

function jsonOf(value: unknown): string {
  try {
    return JSON.stringify(value) ?? "";
  } catch {
    // Only bigints make JSON.stringify throw; the replacer is slow, so it is the rare path.
    return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? "x".repeat(20) : v)) ?? "";
  }
}

const NON_ASCII = /[\u0080-\uffff]/;
const WIDE = /[\u0100-\uffff]/;
const ESCAPED_SURROGATE = /\\u[dD][89a-fA-F]/;
const utf8 = new TextEncoder();

/** Whether a commit threw because the atomic broke one of Deno KV's size limits. */
export function isSizeLimitError(error: unknown): boolean {
  return error instanceof TypeError && /too large/i.test(error.message);
}
