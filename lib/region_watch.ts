/**
 * Keeps every region's mode and lag gauges following its lag when nothing else asks.
 * Claims, region reads and status applies each evaluate the mode of their region; a
 * region whose status queue has stalled takes no apply, and may take no claim or read
 * while its lag grows: its mode would not enter fallback, its mode history would date the
 * switch by the next claim instead of the crossing, and its lag gauge would stay flat.
 */
import type { Clock } from "./clock.ts";
import { evaluateMode } from "./fallback.ts";
import { log } from "./log.ts";
import { listRegionConfigs } from "./regions.ts";

/** A closed handle (a shutdown) never serves again: the watch ends rather than log forever. */
const isClosed = (error: unknown) =>
  error instanceof Deno.errors.BadResource ||
  (error instanceof Error && /database is closed/i.test(error.message));

/** How often an isolate running the watch evaluates every region. */
export const WATCH_EVERY_MS = 5_000;

/**
 * Evaluates every region's mode once (evaluateMode: switching it if its lag says so, and
 * updating its gauges). One region failing does not stop the others; returns how many failed.
 */
export async function evaluateEveryRegion(kv: Deno.Kv, clock: Clock): Promise<number> {
  let failed = 0;
  for (const { name } of await listRegionConfigs(kv)) {
    try {
      await evaluateMode(kv, clock, name);
    } catch (error) {
      failed++;
      log("warn", "region watch: evaluation failed", { region: name, error: String(error) });
    }
  }
  return failed;
}

/**
 * Runs evaluateEveryRegion every `everyMs`, one pass at a time, until stopped. Mode changes
 * are compare-and-swap commits, so any number of isolates may watch at once.
 */
export function watchRegions(
  kv: Deno.Kv,
  clock: Clock,
  everyMs = WATCH_EVERY_MS,
): { stop(): void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  const pass = async () => {
    try {
      await evaluateEveryRegion(kv, clock);
    } catch (error) {
      if (isClosed(error)) {
        log("info", "region watch: the KV handle is closed; the watch stops");
        return;
      }
      log("warn", "region watch: cannot list regions", { error: String(error) });
    }
    if (!stopped) timer = setTimeout(pass, everyMs);
  };
  timer = setTimeout(pass, everyMs);
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
