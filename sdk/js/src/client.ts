// `createClient` and interactive transactions. A client holds no connection of its own: every
// call is one `fetch`, so the runtime's keep-alive pool does the reuse; make one client per module
// scope and share it.

import { SluiceError } from './error.js';
import { aborted, post, type Gateway, type RetryOptions } from './http.js';
import { makeSql, type BatchOptions, type ClientBatchOptions, type Isolation, type SqlTag } from './sql.js';
import type { ParseOptions } from './values.js';
import type { AbortSignalLike, FetchLike } from './web.js';

export interface ClientOptions extends ParseOptions {
  /** The gateway's base URL, e.g. `https://sluice.example.com`. */
  url: string;
  /** The tenant's API key, sent as `Authorization: Bearer …`. A server secret: never in a browser. */
  apiKey?: string;
  /**
   * Instead of `apiKey`: an end user's JWT, or a function returning one (called before every
   * request, so it can cache and refresh; called again once when the gateway answers 401).
   * Sent as `Authorization: Bearer …`; the tenant's `jwt` table decides the Postgres role.
   */
  authToken?: string | (() => string | Promise<string>);
  /** A `fetch` to use instead of the global one (tests, tracing, a custom agent). */
  fetch?: FetchLike;
  /** Extra headers for every request (`x-request-id` is echoed back by the gateway). */
  headers?: Record<string, string>;
  /** Default statement timeout of every query, in ms. */
  timeoutMs?: number;
  /** Retries of calls the gateway did not run (429/503); `false` turns them off. */
  retry?: RetryOptions | false;
}

export interface TransactionOptions {
  isolation?: Isolation;
  readOnly?: boolean;
  deferrable?: boolean;
  /** The gateway rolls the transaction back when it sits idle this long (default 5000 ms). */
  idleTimeoutMs?: number;
  /** Aborting cancels the running statement and rolls the transaction back. */
  signal?: AbortSignalLike;
}

/** The `tx` of `sql.transaction(async (tx) => …)`: the same template, its calls inside the transaction. */
export interface Transaction extends SqlTag<BatchOptions> {}

/** The client: a tagged template with helpers. */
export interface Sql extends SqlTag<ClientBatchOptions> {
  /**
   * Runs `fn` inside an interactive transaction: BEGIN, `fn`'s queries through `tx`, then COMMIT,
   * or ROLLBACK when `fn` throws or `signal` aborts. `tx`'s calls run one at a time in the order
   * they were made, and are never retried: retry the whole transaction instead.
   */
  transaction<T>(fn: (tx: Transaction) => T | PromiseLike<T>, options?: TransactionOptions): Promise<T>;
  /**
   * A multi-statement script without parameters (migrations), in one transaction unless
   * `transaction: false` (for `CREATE INDEX CONCURRENTLY`). Never retried after a network error.
   */
  script(text: string, options?: ScriptOptions): Promise<void>;
}

export interface ScriptOptions {
  /** `false` runs the statements without a transaction around them. */
  transaction?: boolean;
  signal?: AbortSignalLike;
  /** The client gives up after this many ms. */
  timeoutMs?: number;
}

export function createClient(options: ClientOptions): Sql {
  const { url, apiKey, authToken, fetch: customFetch, headers, retry, ...defaults } = options ?? ({} as ClientOptions);
  if (!url) throw new TypeError('createClient: `url` is missing (the gateway URL, e.g. process.env.SLUICE_URL)');
  if (!apiKey && !authToken) throw new TypeError('createClient: `apiKey` is missing (the tenant API key, e.g. process.env.SLUICE_API_KEY; or `authToken`, an end user JWT)');
  let base: string;
  try {
    base = new URL(url).href.replace(/\/+$/, '');
  } catch {
    throw new TypeError(`createClient: \`url\` is not a URL: ${JSON.stringify(url)}`);
  }
  const gateway: Gateway = {
    url: base,
    headers: authToken ? { ...headers } : { ...headers, authorization: `Bearer ${apiKey}` },
    authToken,
    // The global is read at call time and called bare: Cloudflare Workers reject a fetch called
    // as a method of another object.
    fetch: customFetch ?? ((input, init) => fetch(input, init)),
    retry: retry === false ? false : { maxAttempts: 3, baseDelayMs: 100, maxDelayMs: 2000, maxElapsedMs: 10_000, ...retry },
  };
  const client = makeSql({
    gateway,
    defaults,
    path: '/v1',
    retry: true,
    batchFields: ({ isolation, readOnly, deferrable }) => ({ isolation, readOnly, deferrable }),
    enqueue: (task) => task(),
  }) as Sql;
  client.transaction = (fn, options = {}) => transaction(gateway, defaults, fn, options);
  client.script = async (script, { transaction, signal, timeoutMs } = {}) => {
    await post(gateway, '/v1/batch', { script, transaction }, { signals: [signal], deadlineMs: timeoutMs, retry: true });
  };
  return client;
}

async function transaction<T>(
  gateway: Gateway,
  defaults: ParseOptions,
  fn: (tx: Transaction) => T | PromiseLike<T>,
  { signal, isolation, readOnly, deferrable, idleTimeoutMs }: TransactionOptions,
): Promise<T> {
  // BEGIN did not run on a 429/503, so it is retried like any call outside a transaction.
  const begun = await post(gateway, '/v1/transactions', { isolation, readOnly, deferrable, idleTimeoutMs }, { signals: [signal], retry: true });
  const path = '/v1/transactions/' + encodeURIComponent(begun.id);
  // The gateway answers a second concurrent call with 409, so calls wait for the previous one.
  let tail: Promise<unknown> = Promise.resolve();
  let open = true;
  const enqueue = <R>(task: () => Promise<R>): Promise<R> => {
    if (!open) return Promise.reject(new Error('this transaction has ended: run its queries inside the callback, and await them'));
    const result = tail.then(task);
    tail = result.catch(() => {});
    return result;
  };
  const tx = makeSql({ gateway, defaults, path, retry: false, batchFields: () => ({}), signal, enqueue });
  let result: T;
  const abort = signal && rejectOnAbort(signal);
  try {
    result = await (abort ? Promise.race([fn(tx), abort.promise]) : fn(tx));
    if (signal?.aborted) throw aborted(signal);
  } catch (error) {
    open = false;
    await tail.then(() => rollback(gateway, path));
    throw error;
  } finally {
    abort?.dispose();
  }
  open = false;
  // COMMIT did not run on a 429/503 either. The caller's signal no longer applies: past this
  // point, aborting could not tell whether the transaction committed. Should COMMIT fail
  // outright, the gateway rolls the transaction back on its idle timeout.
  const { command } = await tail.then(() => post(gateway, path + '/commit', undefined, { signals: [], retry: true }));
  if (command !== 'COMMIT') {
    throw new SluiceError('transaction_rolled_back', 'a statement in the transaction failed, so COMMIT rolled it back');
  }
  return result;
}

/**
 * Best effort: the error that led here is what the caller needs. The gateway rolls back an
 * abandoned transaction on its idle timeout anyway.
 */
async function rollback(gateway: Gateway, path: string): Promise<void> {
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await post(gateway, path + '/rollback', undefined, { signals: [], retry: true, deadlineMs: 5000 });
      return;
    } catch (error) {
      // After an abort, the gateway may still be cancelling the statement for a few moments.
      if ((error as SluiceError).kind !== 'transaction_busy') return;
      await new Promise((resolve) => setTimeout(resolve, 50 << attempt));
    }
  }
}

/** Rejects when `signal` aborts; `dispose` removes the listener, so a long-lived signal keeps none. */
function rejectOnAbort(signal: AbortSignalLike): { promise: Promise<never>; dispose(): void } {
  let listener!: () => void;
  const promise = new Promise<never>((_, reject) => {
    listener = () => reject(aborted(signal));
    if (signal.aborted) listener();
    else signal.addEventListener('abort', listener, { once: true });
  });
  // The race may be decided by `fn`; an abort after that has nobody to tell.
  promise.catch(() => {});
  return { promise, dispose: () => signal.removeEventListener('abort', listener) };
}
