/**
 * Work still running, so a shutdown can wait for the queue messages it has taken: a handler
 * cut off by closing the store leaves its message taken but unfinished, and Deno KV gives
 * it to a consumer again only after about a minute, holding the region's lag up meanwhile.
 */
export class InFlight {
  #running = new Set<Promise<unknown>>();

  /** Counts `work` until it settles; returns it unchanged (a rejection still reaches the caller). */
  track<T>(work: Promise<T>): Promise<T> {
    this.#running.add(work);
    const forget = () => this.#running.delete(work);
    work.then(forget, forget);
    return work;
  }

  /** How much is running now. */
  get size(): number {
    return this.#running.size;
  }

  /** Resolves once nothing is running, waiting also for work started meanwhile. */
  async idle(): Promise<void> {
    while (this.#running.size > 0) await Promise.allSettled(this.#running);
  }
}

/**
 * Resolves once Deno KV has recorded as finished the queue messages whose handlers have
 * settled: Deno sends each finish after its handler settles, and closing the store drops
 * those still on their way (the message then waits a minute for redelivery). One turn of
 * the event loop lets Deno send them; a commit queued behind them on the store sees them done.
 */
export async function queueFinishesRecorded(kv: Deno.Kv): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 0));
  await kv.atomic().commit();
}

/**
 * Waits until no queue handler runs and Deno KV has recorded every finished one. The
 * listener goes on taking messages until the store closes, and one taken while the
 * finishes are recorded would be cut off: so this repeats until a round ends with none.
 */
export async function queueDrained(kv: Deno.Kv, work: InFlight): Promise<void> {
  do {
    await work.idle();
    await queueFinishesRecorded(kv);
  } while (work.size > 0);
}

/** `work`'s value, or `late` if it has not settled within `ms`; the timer never outlives it. */
export async function within<T, L>(work: Promise<T>, ms: number, late: L): Promise<T | L> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const lateness = new Promise<L>((resolve) => timer = setTimeout(resolve, ms, late));
  try {
    return await Promise.race([work, lateness]);
  } finally {
    clearTimeout(timer);
  }
}
