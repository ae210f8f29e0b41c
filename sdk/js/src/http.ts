// One POST to the gateway: deadline, caller's abort, error mapping, and the retry policy. A retry
// happens only where a second send cannot run a statement twice: the gateway answered 429 or
// 503 (API.md: the statement did not run), or no response came at all and the caller marked
// the request idempotent.

import { SluiceError } from './error.js';
import type { AbortSignalLike, BodyLike, FetchLike, ResponseLike } from './web.js';

export interface RetryOptions {
  /** Sends at most this many times, the first included (default 3). */
  maxAttempts?: number;
  /** Backoff base: attempt n waits up to `baseDelayMs * 2^(n-1)`, full jitter (default 100). */
  baseDelayMs?: number;
  /** Cap of one backoff, on top of `Retry-After` (default 2000). */
  maxDelayMs?: number;
  /** No retry starts later than this after the first send (default 10000). */
  maxElapsedMs?: number;
}

/** The gateway one client talks to, and how: what all its requests share. */
export interface Gateway {
  url: string;
  headers: Record<string, string>;
  fetch: FetchLike;
  retry: Required<RetryOptions> | false;
  /** An end user's token (a JWT), asked for before every request; see `ClientOptions.authToken`. */
  authToken?: string | (() => string | Promise<string>);
}

export interface Call {
  /** Any of these aborting aborts the request. */
  signals: (AbortSignalLike | undefined)[];
  /** The client's own deadline for one send, in ms. */
  deadlineMs?: number;
  /** Retry on 429/503; false inside a transaction's callback. */
  retry: boolean;
  /** Retry after a network error too. */
  idempotent?: boolean;
  /** For the error: the statement's text. */
  query?: string;
  /** Ask for NDJSON and resolve to the open `Streamed` response instead of its JSON. */
  stream?: boolean;
}

/** An NDJSON response whose body is still arriving; `done()` ends the request and its listeners. */
export interface Streamed {
  body: BodyLike;
  requestId?: string;
  done(): void;
}

export async function post(gateway: Gateway, path: string, body: unknown, call: Call): Promise<any> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const policy = call.retry && gateway.retry;
  const started = Date.now();
  let refreshed = false;
  for (let attempt = 1; ; attempt++) {
    try {
      return await send(gateway, path, payload, call);
    } catch (error) {
      const failure = error as SluiceError;
      // A token that expired between two calls: ask the provider again, once. The gateway
      // refused before running anything, so this is safe even inside a transaction.
      if (failure.status === 401 && typeof gateway.authToken === 'function' && !refreshed) {
        refreshed = true;
        attempt--;
        continue;
      }
      failure.attempts = attempt;
      if (call.query) failure.query = call.query;
      // A 429/503 from something other than the gateway (a proxy's page) promises nothing.
      const refused = (failure.status === 429 || failure.status === 503) && failure.kind !== 'bad_response';
      const retryable = refused || (failure.kind === 'network' && call.idempotent);
      if (!policy || !retryable || attempt >= policy.maxAttempts) throw failure;
      const backoff = Math.random() * Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
      const wait = (failure.retryAfter ?? 0) * 1000 + backoff;
      if (Date.now() + wait - started > policy.maxElapsedMs) throw failure;
      await sleep(wait, call.signals);
    }
  }
}

async function send(gateway: Gateway, path: string, payload: string | undefined, call: Call): Promise<any> {
  const controller = new AbortController();
  let timedOut = false;
  const abort = () => controller.abort();
  const timer = call.deadlineMs === undefined ? undefined : setTimeout(() => ((timedOut = true), abort()), call.deadlineMs);
  for (const signal of call.signals) signal?.addEventListener('abort', abort);
  // A stream's response outlives this function: its reader cleans up, through `done`.
  let open = false;
  const done = () => {
    clearTimeout(timer);
    for (const signal of call.signals) signal?.removeEventListener('abort', abort);
    controller.abort();
  };
  // Why the request ended early, once it has.
  const cancelled = (cause: unknown) => {
    const signal = call.signals.find((s) => s?.aborted);
    if (signal) return aborted(signal);
    if (timedOut) return new SluiceError('timeout', `no answer within ${call.deadlineMs} ms`, { cause });
  };
  try {
    const early = cancelled(undefined);
    if (early) throw early;
    let headers = payload === undefined ? gateway.headers : { ...gateway.headers, 'content-type': 'application/json' };
    if (call.stream) headers = { ...headers, accept: 'application/x-ndjson' };
    if (gateway.authToken !== undefined) {
      const token = typeof gateway.authToken === 'function' ? await gateway.authToken() : gateway.authToken;
      headers = { ...headers, authorization: `Bearer ${token}` };
    }
    let response: ResponseLike;
    try {
      response = await gateway.fetch(gateway.url + path, { method: 'POST', headers, body: payload, signal: controller.signal });
    } catch (error) {
      // A browser reports a CORS refusal as a bare network failure ("Failed to fetch").
      const cors = typeof document === 'undefined' ? '' : " (in a browser this is often CORS: the page's origin must be in the tenant's cors.origins)";
      throw cancelled(error) ?? new SluiceError('network', `could not reach the gateway: ${(error as Error)?.message}${cors}`, { cause: error });
    }
    const requestId = response.headers.get('x-request-id');
    const fields = requestId ? { status: response.status, requestId } : { status: response.status };
    if (call.stream && response.ok && response.body) {
      open = true;
      return { body: response.body, requestId: requestId ?? undefined, done } satisfies Streamed;
    }
    let text: string;
    try {
      text = await response.text();
    } catch (error) {
      // The headers came, so the statement may have run.
      throw cancelled(error) ?? new SluiceError('connection_lost', 'the response broke off', { ...fields, cause: error });
    }
    let json: any;
    try {
      json = JSON.parse(text);
    } catch {}
    if (response.ok && json) return json;
    const error = json?.error;
    if (!error?.kind) {
      throw new SluiceError('bad_response', `HTTP ${response.status} without a gateway answer: ${text.slice(0, 200)}`, fields);
    }
    const { retryAfterMs, ...rest } = error;
    const retryAfter = parseRetryAfter(response.headers.get('retry-after')) ?? (retryAfterMs === undefined ? undefined : retryAfterMs / 1000);
    throw new SluiceError(error.kind, error.message, retryAfter === undefined ? { ...rest, ...fields } : { ...rest, ...fields, retryAfter });
  } finally {
    if (!open) {
      clearTimeout(timer);
      for (const signal of call.signals) signal?.removeEventListener('abort', abort);
    }
  }
}

/** Seconds, from either form of the header: a number of seconds or an HTTP date. */
function parseRetryAfter(header: string | null): number | undefined {
  if (!header) return undefined;
  const seconds = Number(header);
  if (seconds >= 0) return seconds;
  const at = Date.parse(header);
  return Number.isNaN(at) ? undefined : Math.max(0, (at - Date.now()) / 1000);
}

function sleep(ms: number, signals: (AbortSignalLike | undefined)[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      for (const signal of signals) signal?.removeEventListener('abort', stop);
    };
    const stop = () => {
      done();
      reject(aborted(signals.find((signal) => signal?.aborted)!));
    };
    const timer = setTimeout(() => (done(), resolve()), ms);
    for (const signal of signals) signal?.addEventListener('abort', stop);
  });
}

export function aborted(signal: AbortSignalLike): SluiceError {
  return new SluiceError('aborted', 'the request was aborted', { cause: signal.reason });
}
