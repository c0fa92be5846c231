/** Percentiles and medians for the figures chaos, overload and soak runs print. */

/** Latency figures, ms (null when there were no samples). */
export interface Percentiles {
  count: number;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  max: number | null;
}

/** The value below which `q` (0..1) of the sorted samples fall (nearest rank). */
function rank(sorted: readonly number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

/** p50, p90, p99 and max of `values`, rounded to 0.1. */
export function percentiles(values: readonly number[]): Percentiles {
  const sorted = [...values].sort((a, b) => a - b);
  const round = (v: number | null) => (v === null ? null : Math.round(v * 10) / 10);
  return {
    count: sorted.length,
    p50: round(rank(sorted, 0.5)),
    p90: round(rank(sorted, 0.9)),
    p99: round(rank(sorted, 0.99)),
    max: round(sorted.at(-1) ?? null),
  };
}

/** The median of `values` (null when empty). */
export function median(values: readonly number[]): number | null {
  return rank([...values].sort((a, b) => a - b), 0.5);
}

/** `p50/p90/p99/max ms` for a line of output. */
export function formatPercentiles(p: Percentiles): string {
  return p.count === 0
    ? "no samples"
    : `p50 ${p.p50} / p90 ${p.p90} / p99 ${p.p99} / max ${p.max} ms`;
}
