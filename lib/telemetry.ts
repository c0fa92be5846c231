/**
 * OpenTelemetry through Deno's built-in support: with OTEL_DENO=true Deno registers
 * an SDK behind `@opentelemetry/api` and exports over OTLP; without it these calls
 * are no-ops. Span and metric names are documented in the README.
 */
import { type Attributes, metrics, type Span, SpanStatusCode, trace } from "@opentelemetry/api";
import { AllotError, UnavailableError } from "./errors.ts";
import type { RegionMode } from "./schemas.ts";

const tracer = trace.getTracer("allot");
const meter = metrics.getMeter("allot");

/** Counters and histograms allot reports. */
export const instruments = {
  claims: meter.createCounter("allot.claims", {
    unit: "{claim}",
    description: "Claims answered, by region, serving region and outcome",
  }),
  claimGroupSize: meter.createHistogram("allot.claim.group_size", {
    unit: "{claim}",
    description: "Claims per group commit",
  }),
  groupConflicts: meter.createCounter("allot.claim.group_conflicts", {
    unit: "{commit}",
    description:
      "Group commits that failed their checks (their claims retried alone) or whose outcome is unknown (refused)",
  }),
  statusUpdates: meter.createCounter("allot.status.updates", {
    unit: "{update}",
    description: "Status updates applied (processed), by region",
  }),
  updatesPerCommit: meter.createHistogram("allot.status.updates_per_commit", {
    unit: "{update}",
    description: "Status updates per apply commit",
  }),
};

/** Last lag, mode and dead letters seen per region, and when (performance.now()). */
interface RegionGauge {
  lagMs: number;
  mode: RegionMode;
  deadLettered: number;
  seenAt: number;
}
const regionGauges = new Map<string, RegionGauge>();

/**
 * How long a process exports a region's gauges after it last evaluated that region. The
 * process holding the region watch evaluates every region every 5 s; any other evaluates a
 * region only when a request touches it, and would otherwise export its last, aging figures
 * beside the holder's current ones.
 */
export const GAUGE_FRESH_MS = 15_000;

/** The regions whose gauges this process exports now: those evaluated within GAUGE_FRESH_MS. */
export function freshGauges(now = performance.now()): Array<[string, RegionGauge]> {
  return [...regionGauges].filter(([, g]) => now - g.seenAt <= GAUGE_FRESH_MS);
}

meter.createObservableGauge("allot.region.lag_ms", {
  unit: "ms",
  description: "Status lag per region",
})
  .addCallback((result) => {
    for (const [region, g] of freshGauges()) result.observe(g.lagMs, { region });
  });
meter.createObservableGauge("allot.region.fallback", {
  unit: "1",
  description: "1 when the region serves claims from its backup, else 0",
}).addCallback((result) => {
  for (const [region, g] of freshGauges()) {
    result.observe(g.mode === "fallback" ? 1 : 0, { region });
  }
});
meter.createObservableGauge("allot.region.dead_letters", {
  unit: "{update}",
  description:
    "Status updates dead-lettered per region, since its creation (a discard does not lower it)",
}).addCallback((result) => {
  for (const [region, g] of freshGauges()) result.observe(g.deadLettered, { region });
});

/** Records a region's latest evaluated lag and mode for the gauges. */
export function observeRegion(
  region: string,
  lagMs: number,
  mode: RegionMode,
  deadLettered: number,
): void {
  regionGauges.set(region, { lagMs, mode, deadLettered, seenAt: performance.now() });
}

/** Stops exporting a deleted region's gauges, whose last figures would otherwise stay for ever. */
export function forgetRegion(region: string): void {
  regionGauges.delete(region);
}

/** The regions whose gauges this process keeps, fresh or not, in name order. */
export function gaugedRegions(): string[] {
  return [...regionGauges.keys()].sort();
}

/**
 * Runs `fn` in a span and rethrows what it throws. A refusal allot was built to give (an
 * `AllotError` such as no capacity) is named in `allot.problem` and leaves the span's status
 * unset, so that trace error rates count failures of allot only: anything else, and an
 * `UnavailableError` (a store that did not answer, contention, overload), marks an error.
 */
export async function inSpan<T>(
  name: string,
  attributes: Attributes,
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  return await tracer.startActiveSpan(name, { attributes }, async (span) => {
    try {
      return await fn(span);
    } catch (error) {
      if (error instanceof AllotError && !(error instanceof UnavailableError)) {
        span.setAttribute("allot.problem", error.slug);
      } else {
        span.recordException(error as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: String(error) });
      }
      throw error;
    } finally {
      span.end();
    }
  });
}
