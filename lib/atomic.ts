/**
 * An atomic operation recorded before it is sent, so a batch can be measured
 * against Deno KV's per-atomic limits and split before it is committed.
 */

/** Deno KV's limits on one atomic operation, with a margin on bytes for encoding overhead. */
export const ATOMIC_LIMITS = { checks: 100, mutations: 1000, bytes: 760_000 } as const;

/** The part of Deno.AtomicOperation that planning code writes to (both it and AtomicPlan fit). */
export interface AtomicWriter {
  check(...checks: Deno.AtomicCheck[]): unknown;
  set(key: Deno.KvKey, value: unknown, options?: { expireIn?: number }): unknown;
  delete(key: Deno.KvKey): unknown;
  sum(key: Deno.KvKey, n: bigint): unknown;
}

type Step = (op: Deno.AtomicOperation) => void;

/** Records checks and mutations, counting what Deno KV limits. */
export class AtomicPlan implements AtomicWriter {
  checks = 0;
  mutations = 0;
  bytes = 0;
  #steps: Step[] = [];

  check(...checks: Deno.AtomicCheck[]): this {
    this.checks += checks.length;
    for (const c of checks) this.bytes += sizeOf(c.key);
    this.#steps.push((op) => op.check(...checks));
    return this;
  }

  set(key: Deno.KvKey, value: unknown, options?: { expireIn?: number }): this {
    this.mutations++;
    this.bytes += sizeOf(key) + sizeOf(value);
    this.#steps.push((op) => op.set(key, value, options));
    return this;
  }

  delete(key: Deno.KvKey): this {
    this.mutations++;
    this.bytes += sizeOf(key);
    this.#steps.push((op) => op.delete(key));
    return this;
  }

  sum(key: Deno.KvKey, n: bigint): this {
    this.mutations++;
    this.bytes += sizeOf(key) + 8;
    this.#steps.push((op) => op.sum(key, n));
    return this;
  }

  /** Whether this plan fits in one atomic operation. */
  fits(): boolean {
    return this.checks <= ATOMIC_LIMITS.checks && this.mutations <= ATOMIC_LIMITS.mutations &&
      this.bytes <= ATOMIC_LIMITS.bytes;
  }

  /** How many times over the tightest limit this plan is (> 1 when it does not fit). */
  overflow(): number {
    return Math.max(
      this.checks / ATOMIC_LIMITS.checks,
      this.mutations / ATOMIC_LIMITS.mutations,
      this.bytes / ATOMIC_LIMITS.bytes,
    );
  }

  /** Sends the recorded steps as one atomic operation. */
  commit(kv: Deno.Kv): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
    const op = kv.atomic();
    for (const step of this.#steps) step(op);
    return op.commit();
  }
}

/** An upper bound on a key's or value's encoded size (JSON length, bigints as 20 digits). */
function sizeOf(value: unknown): number {
  try {
    return JSON.stringify(value)?.length ?? 0;
  } catch {
    // Only bigints make JSON.stringify throw; the replacer is slow, so it is the rare path.
    return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? "x".repeat(20) : v))
      ?.length ?? 0;
  }
}
