/**
 * THE ANTI-PATTERN allot exists to avoid, simulated in-process (no allot code runs
 * here): allocation state in an eventually consistent store, read through a view
 * that converges every `convergenceMs`, and check-then-act on it. Every caller in a
 * convergence window sees the same stale free list, so callers pick the same slot
 * and the later write silently overwrites the earlier one.
 */

/**
 * What check-then-act needs from a store: a possibly stale read of who holds what, and
 * a blind write. The bench (bench/antipattern_sim.ts) implements it over a file-backed
 * Deno KV, its view refreshed with `kv.list`; the demo over an in-memory map.
 */
export interface CheckThenActStore {
  /**
   * Holders by slot as this reader sees them (a slot not in the map looks free). A view
   * is replaced when it is refreshed, never changed in place.
   */
  read(now: number): ReadonlyMap<number, unknown>;
  /** A blind write: last writer wins. */
  write(slot: number, holder: string): void;
}

/** A store whose reads come from a snapshot refreshed every `convergenceMs`. */
export class EventuallyConsistentStore implements CheckThenActStore {
  readonly #truth = new Map<number, string>();
  #view = new Map<number, string>();
  #viewAt = -Infinity;

  constructor(private readonly convergenceMs: number) {}

  /** The holders as this reader sees them: possibly `convergenceMs` old. */
  read(now: number): ReadonlyMap<number, string> {
    if (now - this.#viewAt >= this.convergenceMs) {
      this.#view = new Map(this.#truth);
      this.#viewAt = now;
    }
    return this.#view;
  }

  /** A blind write: last writer wins. */
  write(slot: number, holder: string): void {
    this.#truth.set(slot, holder);
  }

  /** Who really holds `slot` once the store has converged. */
  holder(slot: number): string | undefined {
    return this.#truth.get(slot);
  }
}

/** What one burst against the store produced. */
export interface AntiPatternResult {
  callers: number;
  /** Callers told "you have slot N". */
  granted: number;
  /** Callers told there was nothing free. */
  refused: number;
  /** Slots handed to two or more callers. */
  doubleAllocated: number;
  /** Granted callers whose record was overwritten: they use a slot someone else holds. */
  overwritten: number;
}

/** Free slots per view: views are replaced, never changed, so each is listed once. */
const freeByView = new WeakMap<ReadonlyMap<number, unknown>, { slots: number; free: number[] }>();

/** The slots `seen` shows free, of `slots` numbered from 0. */
export function freeSlots(seen: ReadonlyMap<number, unknown>, slots: number): number[] {
  const cached = freeByView.get(seen);
  if (cached?.slots === slots) return cached.free;
  const free = Array.from({ length: slots }, (_, i) => i).filter((slot) => !seen.has(slot));
  freeByView.set(seen, { slots, free });
  return free;
}

/**
 * One caller: check (read the view, pick a free slot) then act (write it). Returns
 * the slot the caller now believes is exclusively its own, or null.
 */
export function checkThenAct(
  store: CheckThenActStore,
  slots: number,
  caller: string,
  now: number,
  random: () => number,
): number | null {
  const free = freeSlots(store.read(now), slots);
  if (free.length === 0) return null;
  const slot = free[Math.floor(random() * free.length)];
  store.write(slot, caller);
  return slot;
}

/** Tallies the burst's outcome from what each caller believes it holds. */
export function tally(
  store: EventuallyConsistentStore,
  beliefs: ReadonlyMap<string, number | null>,
): AntiPatternResult {
  const perSlot = new Map<number, number>();
  let granted = 0;
  let overwritten = 0;
  for (const [caller, slot] of beliefs) {
    if (slot === null) continue;
    granted++;
    perSlot.set(slot, (perSlot.get(slot) ?? 0) + 1);
    if (store.holder(slot) !== caller) overwritten++;
  }
  return {
    callers: beliefs.size,
    granted,
    refused: beliefs.size - granted,
    doubleAllocated: [...perSlot.values()].filter((count) => count > 1).length,
    overwritten,
  };
}
