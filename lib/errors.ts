/**
 * Expected outcomes as typed errors. `app.onError` turns each into an RFC 9457
 * `application/problem+json` answer, so nothing expected ever becomes a 500.
 */

/** One offending input, named the way a caller wrote it (`lag.exitMs`, `updates.3.seq`). */
export interface FieldIssue {
  field: string;
  message: string;
}

/** RFC 9457 problem document, with allot's extension members. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  field?: string;
  errors?: FieldIssue[];
}

/** Base of every expected failure: carries its HTTP status and problem type. */
export class AllotError extends Error {
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 405 | 409 | 413 | 415 | 422 | 429 | 503,
    readonly slug: string,
    readonly title: string,
    detail: string,
    readonly errors: FieldIssue[] = [],
    readonly retryAfterSeconds?: number,
  ) {
    super(detail);
    this.name = new.target.name;
  }

  /** The problem+json body for this error. */
  toProblem(): Problem {
    const problem: Problem = {
      type: `urn:allot:problem:${this.slug}`,
      title: this.title,
      status: this.status,
      detail: this.message,
    };
    if (this.errors.length > 0) {
      problem.field = this.errors[0].field;
      problem.errors = this.errors;
    }
    return problem;
  }
}

/** The request is malformed (bad JSON, bad header): 400. */
export class BadRequestError extends AllotError {
  constructor(detail: string, errors: FieldIssue[] = []) {
    super(400, "bad-request", "Bad request", detail, errors);
  }
}

/** The request is larger than allot can store at once: 413. */
export class TooLargeError extends AllotError {
  constructor(detail: string) {
    super(413, "too-large", "Payload too large", detail);
  }
}

/** No or unknown bearer token: 401. */
export class UnauthorizedError extends AllotError {
  constructor(detail = "A valid `Authorization: Bearer <token>` header is required") {
    super(401, "unauthorized", "Unauthorized", detail);
  }
}

/** Authenticated but not allowed (role, region scope, claim secret): 403. */
export class ForbiddenError extends AllotError {
  constructor(detail: string) {
    super(403, "forbidden", "Forbidden", detail);
  }
}

/** A named thing does not exist: 404. */
export class NotFoundError extends AllotError {
  constructor(detail: string) {
    super(404, "not-found", "Not found", detail);
  }
}

/** The lease is no longer the caller's (released, expired, lost): 409. */
export class LeaseLostError extends AllotError {
  constructor(detail: string) {
    super(409, "lease-lost", "Lease lost", detail);
  }
}

/** The thing to delete is still in use (a region with resources, leases or dependants): 409. */
export class InUseError extends AllotError {
  constructor(detail: string) {
    super(409, "in-use", "Still in use", detail);
  }
}

/** Well-formed input that breaks a rule (a field out of range, an unknown backup): 422. */
export class ValidationError extends AllotError {
  constructor(detail: string, errors: FieldIssue[]) {
    super(422, "validation", "Invalid request", detail, errors);
  }
}

/** Nothing can be allocated right now; the caller should retry later: 503 + Retry-After. */
export class NoCapacityError extends AllotError {
  constructor(detail: string, retryAfterSeconds = 1) {
    super(503, "no-capacity", "No capacity", detail, [], retryAfterSeconds);
  }
}

/** Overloaded or contended beyond the retry budget: 503 + Retry-After. */
export class UnavailableError extends AllotError {
  constructor(detail: string, retryAfterSeconds = 1) {
    super(503, "unavailable", "Service unavailable", detail, [], retryAfterSeconds);
  }
}
