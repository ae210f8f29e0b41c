// The `sql` function users hold: a tagged template with `query`, `batch`, `id` and `unsafe`
// attached. The client and each transaction get one, differing only in where their statements go
// (`Scope`): the client's routes with retries, or a transaction's routes, one call at a time.

import { SluiceError } from './error.js';
import { aborted, post, type Call, type Gateway, type Streamed } from './http.js';
import { Fragment, Query, id, toStatement, type FullResult, type QueryOptions, type Row, type Runner } from './query.js';
import { parserFor, type Field } from './values.js';
import type { AbortSignalLike } from './web.js';

export type Isolation = 'read uncommitted' | 'read committed' | 'repeatable read' | 'serializable';

export interface BatchOptions {
  /** Aborting cancels the request, and with it the running statement, so the batch rolls back. */
  signal?: AbortSignalLike;
  /** Each statement's timeout on the server (never above the tenant's maximum), as for a query; the client gives up a second later. Defaults to the client's `timeoutMs`. */
  timeoutMs?: number;
  /** Safe to run twice: retry it after a network error too. Defaults to `readOnly`. */
  idempotent?: boolean;
}

export interface ClientBatchOptions extends BatchOptions {
  isolation?: Isolation;
  readOnly?: boolean;
  deferrable?: boolean;
}

/** Each query's result, in order. */
export type BatchResults<Q extends readonly Query<unknown>[]> = { -readonly [K in keyof Q]: Awaited<Q[K]> };

/** The tagged template and its helpers; `Sql` (the client) and `Transaction` extend it. */
export interface SqlTag<Options extends BatchOptions> {
  /** ``sql<User>`select * from users where id = ${id}` `` — values become `$n` parameters. */
  <T = Row>(strings: TemplateStringsArray, ...values: unknown[]): Query<T[]>;
  /** SQL text with `$1..$n` placeholders, or a template query with options. */
  query<T = Row>(text: string, params?: readonly unknown[] | null, options?: QueryOptions & { fullResults?: false }): Query<T[]>;
  query<T = Row>(text: string, params: readonly unknown[] | null | undefined, options: QueryOptions & { fullResults: true }): Query<FullResult<T>>;
  query<T = Row>(query: Query<T[]> | Fragment, options?: QueryOptions & { fullResults?: false }): Query<T[]>;
  query<T = Row>(query: Query<T[]> | Fragment, options: QueryOptions & { fullResults: true }): Query<FullResult<T>>;
  /** With options whose `fullResults` is only known at run time. */
  query<T = Row>(text: string, params?: readonly unknown[] | null, options?: QueryOptions): Query<T[] | FullResult<T>>;
  query<T = Row>(query: Query<T[]> | Fragment, options?: QueryOptions): Query<T[] | FullResult<T>>;
  /** Several statements in one request and one transaction: all commit, or none. */
  batch<const Q extends readonly Query<unknown>[]>(queries: Q, options?: Options): Promise<BatchResults<Q>>;
  /** A quoted identifier: `sql.id('users')`, `sql.id(['app', 'users'])`. */
  id(name: string | readonly string[]): Fragment;
  /** Trusted SQL text, inserted as it is: never pass user input here. */
  unsafe<T = Row>(raw: string): Query<T[]>;
}

/** Where a `SqlTag`'s statements go. */
export interface Scope {
  gateway: Gateway;
  defaults: QueryOptions;
  /** `/v1` for the client, `/v1/transactions/{id}` for a transaction. */
  path: string;
  /** Retry on 429/503: the client yes, a transaction's callback never. */
  retry: boolean;
  /** Extra body fields of `batch` from its options. */
  batchFields(options: ClientBatchOptions): object;
  /** A transaction's signal; aborting it aborts every call of the scope. */
  signal?: AbortSignalLike;
  /** Serialises a transaction's calls, and refuses them once it has ended. */
  enqueue<T>(task: () => Promise<T>): Promise<T>;
}

export function makeSql(scope: Scope): SqlTag<ClientBatchOptions> {
  const run = ((query: Query<unknown>, stream?: true) => {
    const options = withDefaults(scope.defaults, query.options);
    const { sql, params } = toStatement(query);
    const body = { sql, params, rowMode: 'array', timeoutMs: options.timeoutMs };
    const call = {
      signals: [options.signal, scope.signal],
      retry: scope.retry,
      idempotent: options.idempotent,
      query: sql,
    };
    if (stream) return streamRows(scope, body, call, options);
    // The client's own deadline: a second after the statement's.
    const deadlineMs = options.timeoutMs === undefined ? undefined : options.timeoutMs + 1000;
    return scope
      .enqueue(() => post(scope.gateway, scope.path + '/query', body, { ...call, deadlineMs }))
      .then((result) => shape(result, options));
  }) as Runner;

  const sql = (strings: TemplateStringsArray, ...values: unknown[]) => {
    if (!Array.isArray(strings) || !('raw' in strings)) {
      throw new TypeError(
        'sql is a tagged template: write sql`select … where id = ${id}`, not sql("…"). ' +
          'For text with $1, $2 placeholders use sql.query(text, params); for trusted raw SQL, sql.unsafe(text).',
      );
    }
    return new Query(new Fragment(strings, values), {}, run);
  };

  sql.query = (source: string | Query<unknown> | Fragment, params?: any, options?: QueryOptions) => {
    if (typeof source === 'string') {
      // An options object in the params' place would otherwise be bound as parameters, or lost.
      if (params != null && !Array.isArray(params)) {
        throw new TypeError('sql.query(text, params, options): `params` is an array (or null); options go third');
      }
      return new Query({ sql: source, params: params ?? [] }, options ?? {}, run);
    }
    if (!(source instanceof Query || source instanceof Fragment)) {
      throw new TypeError('sql.query takes SQL text, or a query built with the sql template');
    }
    if (Array.isArray(params) || options !== undefined) {
      throw new TypeError('sql.query(query, options): a template query has its parameters already; pass only options');
    }
    // A query again, with these options.
    return new Query(source instanceof Query ? source.source : source, params ?? {}, run);
  };

  sql.batch = async (queries: readonly Query<unknown>[], options: ClientBatchOptions = {}) => {
    // Nothing to run (a migrator with nothing pending): the gateway would refuse an empty list.
    if (!queries.length) return [];
    const statements = queries.map(toStatement);
    const timeoutMs = options.timeoutMs ?? scope.defaults.timeoutMs;
    return scope
      .enqueue(() =>
        post(
          scope.gateway,
          scope.path + '/batch',
          // Rows as arrays everywhere (object rows would merge columns of the same name), and
          // `timeoutMs` as for a query: the statements' timeout, the client's deadline a second later.
          { statements, rowMode: 'array', timeoutMs, ...scope.batchFields(options) },
          {
            signals: [options.signal, scope.signal],
            deadlineMs: timeoutMs === undefined ? undefined : timeoutMs + 1000,
            retry: scope.retry,
            idempotent: options.idempotent ?? options.readOnly,
          },
        ),
      )
      .then(({ results }) => results.map((result: StatementResult, i: number) => shape(result, withDefaults(scope.defaults, queries[i].options))));
  };

  sql.id = id;
  sql.unsafe = (raw: string) => new Query(new Fragment([raw], []), {}, run);
  return sql as SqlTag<ClientBatchOptions>;
}

/** A query's options over the client's; custom type parsers merge, the query's winning. */
function withDefaults(defaults: QueryOptions, options: QueryOptions): QueryOptions {
  return { ...defaults, ...options, types: { ...defaults.types, ...options.types } };
}

/** A statement's result as the gateway sends it: rows as arrays (objects only from an older gateway). */
interface StatementResult {
  fields: Field[];
  rows: unknown[][] | Row[];
  command: string;
  rowCount: number | null;
}

function shape({ fields, rows, command, rowCount }: StatementResult, options: QueryOptions): unknown {
  const parsed = rows.map(rowShaper(fields, options));
  return options.fullResults ? { rows: parsed, fields, command, rowCount } : parsed;
}

/** One row as the gateway sent it (an array, or an object from a transaction's batch) to what the caller gets. */
function rowShaper(fields: Field[], options: QueryOptions): (row: unknown[] | Row) => unknown {
  const parsers = fields.map((field) => parserFor(field, options));
  return (row) => {
    const values = Array.isArray(row) ? row : fields.map((field) => row[field.name]);
    parsers.forEach((parse, i) => {
      if (parse && values[i] !== null) values[i] = parse(values[i]);
    });
    // fromEntries defines properties, so a column named __proto__ stays a plain key.
    return options.rowMode === 'array' ? values : Object.fromEntries(fields.map((field, i) => [field.name, values[i]]));
  };
}

/**
 * A query's rows over NDJSON (API.md, "Large results"): `{"fields"}`, one array per row, then
 * `{"command", "rowCount"}` or `{"error"}`. Bytes are read only as rows are asked for, so a slow
 * consumer holds the gateway back instead of piling rows up here. In a transaction, the stream
 * holds the transaction's queue until it ends: its next call waits for it.
 */
async function* streamRows(scope: Scope, body: object, call: Call, options: QueryOptions): AsyncGenerator<unknown, void, undefined> {
  let opened!: (streamed: Streamed) => void;
  let failed!: (error: unknown) => void;
  const open = new Promise<Streamed>((resolve, reject) => ((opened = resolve), (failed = reject)));
  let close!: () => void;
  const closed = new Promise<void>((resolve) => (close = resolve));
  scope
    .enqueue(() =>
      post(scope.gateway, scope.path + '/query', body, { ...call, stream: true }).then((streamed: Streamed) => {
        opened(streamed);
        return closed;
      }),
    )
    .catch(failed);
  const streamed = await open;
  const reader = streamed.body.getReader();
  const decoder = new TextDecoder();
  let shapeRow: ((row: unknown[]) => unknown) | undefined;
  let buffer = '';
  let last: any;
  try {
    for (;;) {
      let chunk: { done: boolean; value?: Uint8Array };
      try {
        chunk = await reader.read();
      } catch (cause) {
        const signal = call.signals.find((s) => s?.aborted);
        throw signal ? aborted(signal) : new SluiceError('connection_lost', 'the stream broke off', { cause, requestId: streamed.requestId });
      }
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let start = 0;
      for (let end; (end = buffer.indexOf('\n', start)) >= 0; start = end + 1) {
        if (end === start) continue;
        const line = JSON.parse(buffer.slice(start, end));
        if (Array.isArray(line)) {
          yield shapeRow!(line);
        } else if (line.fields) {
          shapeRow = rowShaper(line.fields, options);
        } else {
          last = line;
        }
      }
      buffer = buffer.slice(start);
    }
    if (last?.error) {
      const { kind, message, ...fields } = last.error;
      throw new SluiceError(kind, message, { ...fields, status: 200, requestId: streamed.requestId, query: call.query });
    }
    if (!last) throw new SluiceError('connection_lost', 'the stream ended without its last line', { requestId: streamed.requestId });
  } finally {
    // Ends the request: after a `break`, the gateway sees the client go and cancels the statement.
    streamed.done();
    close();
  }
}
