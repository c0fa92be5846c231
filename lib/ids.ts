/** Identifiers: ULIDs, with randomness drawn from a refilled pool of CSPRNG bytes. */
import { ulid } from "ulid";

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

/** A new ULID: time-ordered, 80 random bits. */
export function newId(): string {
  return ulid(undefined, poolRandom);
}
