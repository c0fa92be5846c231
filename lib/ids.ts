/** Identifiers: ULIDs, with randomness drawn from a refilled pool of CSPRNG bytes. */
import { monotonicFactory } from "ulid";

const pool = new Uint32Array(4096);
let next = pool.length;

/** A uniform [0, 1) from crypto.getRandomValues, 4,096 draws per refill (ulid asks 16 per id). */
function poolRandom(): number {
  if (next === pool.length) {
    crypto.getRandomValues(pool);
    next = 0;
  }
  return pool[next++] / 2 ** 32;
}

const monotonic = monotonicFactory(poolRandom);

/**
 * A new ULID: time-ordered, 80 random bits, and increasing within this process even within
 * one millisecond (the random part then counts up), so lists keyed by id are in creation order.
 */
export function newId(): string {
  return monotonic();
}
