/** Small statistics shared by the bench clients. */

/** The rounds' latencies that were measured (a round without a commit or grant has none). */
export const measured = (values: readonly (number | null)[]) =>
  values.filter((v): v is number => v !== null);

/** The worst round's latency; null when no round measured one. */
export const worst = (values: readonly (number | null)[]) =>
  measured(values).length === 0 ? null : Math.max(...measured(values));

/** The nearest-rank percentile `p` (0-100) of `values`; null when there are none. */
export function percentile(values: readonly number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}
