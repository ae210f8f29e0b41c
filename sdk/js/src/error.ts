// The one error class of the SDK. A gateway error keeps every field the gateway sent (for
// `database` errors that is every field Postgres sent); failures that never got a gateway
// answer get a client-side kind, so `kind` alone tells a caller what happened.

/**
 * What went wrong. The gateway's kinds are those of API.md; the SDK adds its own for failures
 * that have no gateway answer:
 * - `network`: no response at all (connection refused, DNS, TLS, reset before the headers);
 * - `timeout`: the client's own deadline (`timeoutMs`) passed and it gave up on the request;
 * - `aborted`: the caller's `AbortSignal` fired;
 * - `bad_response`: the answer was not the gateway's JSON (a proxy's error page, say);
 * - `transaction_rolled_back`: a transaction's commit answered ROLLBACK because a statement in
 *   it had failed (and its error was caught by the callback).
 */
export type ErrorKind =
  | 'bad_request'
  | 'database'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'method_not_allowed'
  | 'transaction_not_found'
  | 'transaction_busy'
  | 'payload_too_large'
  | 'response_too_large'
  | 'rate_limited'
  | 'pool_timeout'
  | 'queue_full'
  | 'too_many_transactions'
  | 'upstream_unavailable'
  | 'overloaded'
  | 'connection_lost'
  | 'internal'
  | 'network'
  | 'timeout'
  | 'aborted'
  | 'bad_response'
  | 'transaction_rolled_back'
  // A newer gateway may add kinds; they arrive as they are.
  | (string & {});

/** Marks a SluiceError from any copy of the SDK: its ESM and CJS builds, or two installed versions. */
const BRAND = Symbol.for('@sluice/client.SluiceError');

/**
 * Whether `value` is a `SluiceError`, whichever copy of the SDK made it (`instanceof
 * SluiceError` says the same, through `Symbol.hasInstance`).
 */
export function isSluiceError(value: unknown): value is SluiceError {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
}

export class SluiceError extends Error {
  /** `instanceof` by brand, not by class: an error thrown by the CJS build is an instance of the ESM class. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return isSluiceError(value);
  }

  declare kind: ErrorKind;
  /** The HTTP status; absent when no response arrived. */
  declare status?: number;
  /** Seconds to wait before retrying, from `Retry-After` (429 and 503 only). */
  declare retryAfter?: number;
  /** The gateway's `x-request-id`: quote it when asking an operator to look at the logs. */
  declare requestId?: string;
  /** How many times the request was sent, retries included. */
  declare attempts?: number;
  /** The SQL text of the failed statement (never its parameters). */
  declare query?: string;
  // Postgres's fields, on `database` errors.
  /** SQLSTATE, e.g. `23505` for a unique violation. */
  declare code?: string;
  declare severity?: string;
  declare detail?: string;
  declare hint?: string;
  /** 1-based character position of the error in the statement's text. */
  declare position?: number;
  declare internalPosition?: number;
  declare internalQuery?: string;
  declare where?: string;
  declare schema?: string;
  declare table?: string;
  declare column?: string;
  declare dataType?: string;
  declare constraint?: string;
  declare file?: string;
  declare line?: number;
  declare routine?: string;
  /** In a batch: the 0-based index of the statement that failed. */
  declare statementIndex?: number;
  /** `expired` when a transaction timed out (`transaction_not_found`). */
  declare reason?: string;
  /** The byte limit that was exceeded (`payload_too_large`, `response_too_large`). */
  declare limit?: number;

  constructor(kind: ErrorKind, message: string, fields?: object) {
    super(message);
    Object.defineProperty(this, BRAND, { value: true });
    this.name = 'SluiceError';
    Object.assign(this, fields);
    this.kind = kind;
  }
}
