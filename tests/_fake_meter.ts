/**
 * An in-memory MeterProvider behind @opentelemetry/api, for tests of what allot's metrics
 * say. Import it before anything that loads lib/telemetry.ts (which takes its meter when it
 * loads): each test file runs in its own isolate, so only that file's metrics are recorded.
 */
import { metrics } from "@opentelemetry/api";

/** Every counter add and histogram record, in order. */
export const recorded: Array<{ name: string; value: number; attributes: Record<string, unknown> }> =
  [];

const record = (name: string) => {
  const push = (value: number, attributes: Record<string, unknown> = {}) =>
    recorded.push({ name, value, attributes });
  return { add: push, record: push };
};
const observable = () => ({ addCallback() {}, removeCallback() {} });
const meter = {
  createCounter: record,
  createUpDownCounter: record,
  createHistogram: record,
  createGauge: record,
  createObservableGauge: observable,
  createObservableCounter: observable,
  createObservableUpDownCounter: observable,
  addBatchObservableCallback() {},
  removeBatchObservableCallback() {},
};
// deno-lint-ignore no-explicit-any
metrics.setGlobalMeterProvider({ getMeter: () => meter as any });

/** The sum of a counter's adds whose attributes include `match`. */
export function sumOf(name: string, match: Record<string, unknown> = {}): number {
  return recorded
    .filter((r) =>
      r.name === name && Object.entries(match).every(([k, v]) => r.attributes[k] === v)
    )
    .reduce((sum, r) => sum + r.value, 0);
}
