/**
 * Keeps every region's mode and lag gauges following its lag when nothing else asks.
 * Claims, region reads and status applies each evaluate the mode of their region; a
 * region whose status queue has stalled takes no apply, and may take no claim or read
 * while its lag grows: its mode would not enter fallback, its mode history would date the
 * switch by the next claim instead of the crossing, and its lag gauge would stay flat.
 */
import type { Clock } from "./clock.ts";
import { NotFoundError } from "./errors.ts";
import { evaluateMode } from "./fallback.ts";
import { log } from "./log.ts";
import { keys } from "./keys.ts";
import { getAll, isStoreClosed } from "./kv.ts";
import { regionNames } from "./regions.ts";
import { forgetRegion, gaugedRegions } from "./telemetry.ts";

/** How often an isolate running the watch evaluates every region. */
export const WATCH_EVERY_MS = 5_000;

/**
 * Evaluates every region's mode once (evaluateMode: switching it if its lag says so, and
 * updating its gauges). One region failing does not stop the others (returns how many
 * failed); `stopping` ends the pass early.
 */
export async function evaluateEveryRegion(
  kv: Deno.Kv,
  clock: Clock,
  stopping: () => boolean = () => false,
): Promise<number> {
  let failed = 0;
  for await (const name of regionNames(kv)) {
    if (stopping()) return failed;
    try {
      await evaluateMode(kv, clock, name);
    } catch (error) {
      if (isStoreClosed(error)) throw error; // no other region can be read either
      if (error instanceof NotFoundError) continue; // deleted since the listing
      failed++;
      log("warn", "region watch: evaluation failed", { region: name, error: String(error) });
    }
  }
  return failed;
}

/**
 * Stops this process's gauges of the regions deleted since it observed them, by any process:
 * one that does not hold the watch, nor reads such a region again, would export them for ever.
 */
export async function forgetDeletedRegions(kv: Deno.Kv): Promise<void> {
  const gauged = gaugedRegions();
  const configs = await getAll(kv, gauged.map((region) => keys.regionConfig(region)));
  gauged.forEach((region, i) => {
    if (configs[i].versionstamp === null) forgetRegion(region);
  });
}

/** Who runs the watch, until when (keys.regionWatch). */
interface WatchLease {
  owner: string;
  until: number;
}

/**
 * Takes the watch for `owner` until `until`, or keeps it: false while another process holds
 * it. So one process watches at a time, however many run (every isolate on Deno Deploy), and
 * another takes over once the holder stops renewing. Mode changes are compare-and-swap
 * commits, so two watching at once during a takeover do no harm.
 */
export async function takeWatch(
  kv: Deno.Kv,
  clock: Clock,
  owner: string,
  until: number,
): Promise<boolean> {
  const held = await kv.get<WatchLease>(keys.regionWatch());
  if (held.value && held.value.owner !== owner && held.value.until > clock.now()) return false;
  const lease: WatchLease = { owner, until };
  const res = await kv.atomic().check(held).set(keys.regionWatch(), lease).commit();
  return res.ok;
}

/** Gives the watch up if `owner` holds it, so a process started next takes it at once. */
export async function releaseWatch(kv: Deno.Kv, owner: string): Promise<void> {
  const held = await kv.get<WatchLease>(keys.regionWatch());
  if (held.value?.owner !== owner) return;
  await kv.atomic().check(held).delete(keys.regionWatch()).commit();
}

/**
 * Runs evaluateEveryRegion every `everyMs`, one pass at a time, until stopped, in the one
 * process that holds the watch (takeWatch; a holder that stops without giving it up is
 * replaced 3 to 4 periods after its last pass, plus however far its clock ran ahead); and
 * forgetDeletedRegions in every process.
 */
export function watchRegions(
  kv: Deno.Kv,
  clock: Clock,
  everyMs = WATCH_EVERY_MS,
): { stop(): Promise<void> } {
  const owner = crypto.randomUUID();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<void> = Promise.resolve();
  let stopped = false;
  const pass = async () => {
    try {
      if (await takeWatch(kv, clock, owner, clock.now() + 3 * everyMs)) {
        await evaluateEveryRegion(kv, clock, () => stopped);
      }
    } catch (error) {
      // A closed handle never serves again: the watch ends rather than log for ever.
      if (isStoreClosed(error)) {
        log("info", "region watch: the KV handle is closed; the watch stops");
        return;
      }
      log("warn", "region watch: the pass failed", { error: String(error) });
    }
    if (!stopped) {
      await forgetDeletedRegions(kv).catch((error) => {
        log("warn", "region watch: forgetting deleted regions' gauges failed", {
          error: String(error),
        });
      });
    }
    if (!stopped) timer = setTimeout(() => running = pass(), everyMs);
  };
  timer = setTimeout(() => running = pass(), everyMs);
  return {
    /** Stops the watch: ends a pass in flight at its next region, then gives the watch up. */
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
      await releaseWatch(kv, owner).catch(() => {}); // a closed store: the lease lapses
    },
  };
}
