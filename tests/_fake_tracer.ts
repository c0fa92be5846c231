/**
 * An in-memory TracerProvider behind @opentelemetry/api, for tests of what allot's spans
 * say. Import it before anything that loads lib/telemetry.ts (which takes its tracer when
 * it loads); each test file runs in its own isolate.
 */
import { type SpanStatus, trace } from "@opentelemetry/api";

/** A finished span: its name, attributes, status and recorded exceptions. */
export interface RecordedSpan {
  name: string;
  attributes: Record<string, unknown>;
  status?: SpanStatus;
  exceptions: unknown[];
}

/** Every span ended, in order. */
export const spans: RecordedSpan[] = [];

function startSpan(name: string, options?: { attributes?: Record<string, unknown> }) {
  const recorded: RecordedSpan = { name, attributes: { ...options?.attributes }, exceptions: [] };
  const span = {
    setAttribute(key: string, value: unknown) {
      recorded.attributes[key] = value;
      return span;
    },
    setAttributes(attributes: Record<string, unknown>) {
      Object.assign(recorded.attributes, attributes);
      return span;
    },
    setStatus(status: SpanStatus) {
      recorded.status = status;
      return span;
    },
    recordException(exception: unknown) {
      recorded.exceptions.push(exception);
    },
    end() {
      spans.push(recorded);
    },
  };
  return span;
}

const tracer = {
  startSpan,
  // The overloads end with the callback; allot passes (name, options, fn).
  startActiveSpan(name: string, ...rest: unknown[]) {
    const fn = rest.at(-1) as (span: unknown) => unknown;
    const options = rest.length > 1 ? rest[0] as { attributes?: Record<string, unknown> } : {};
    return fn(startSpan(name, options));
  },
};
// deno-lint-ignore no-explicit-any
trace.setGlobalTracerProvider({ getTracer: () => tracer as any });
