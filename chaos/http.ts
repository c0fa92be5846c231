/**
 * A small HTTP client for chaos runs: every call ends in an answer or in "no answer"
 * (a transport error or a timeout), never in a hang. No answer means the server may or
 * may not have acted on the request, and callers must treat it so.
 */

/** An answer from the server. */
export interface Answer {
  ok: true;
  status: number;
  headers: Headers;
  // deno-lint-ignore no-explicit-any
  body: any;
  /** Milliseconds from sending to reading the whole answer. */
  ms: number;
}

/** No answer: the request may or may not have been acted on. */
export interface NoAnswer {
  ok: false;
  error: string;
  ms: number;
}

/** What a call ends in. */
export type Outcome = Answer | NoAnswer;

/** What a call sends besides its method and path. */
export interface CallOptions {
  token: string;
  body?: unknown;
  headers?: Record<string, string>;
}

/** Calls one server; each call is bounded by `timeoutMs`. */
export class ApiClient {
  constructor(readonly base: string, readonly timeoutMs = 30_000) {}

  /** Sends one request; resolves with the answer or with why none came. */
  async call(method: string, path: string, options: CallOptions): Promise<Outcome> {
    const headers: Record<string, string> = {
      authorization: `Bearer ${options.token}`,
      ...options.headers,
    };
    let body: string | undefined;
    if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers["content-type"] = "application/json";
    }
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.timeoutMs);
    const started = performance.now();
    try {
      const res = await fetch(`${this.base}${path}`, {
        method,
        headers,
        body,
        signal: abort.signal,
      });
      const text = await res.text();
      return {
        ok: true,
        status: res.status,
        headers: res.headers,
        body: parseBody(text),
        ms: performance.now() - started,
      };
    } catch (error) {
      return { ok: false, error: String(error), ms: performance.now() - started };
    } finally {
      clearTimeout(timer);
    }
  }
}

function parseBody(text: string): unknown {
  if (text === "") return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
