// Statements as values: a tagged template builds a `Fragment` (SQL text pieces with the values
// kept apart) and a `Query` (a fragment, or `$n` text with params, plus options) that runs only
// when it is awaited. Values never enter the SQL text: each becomes a `$n` placeholder, numbered
// when the outermost statement is compiled, so fragments nest freely.

import { encodeParam, type Field, type ParseOptions } from './values.js';
import type { AbortSignalLike } from './web.js';

/** A row as an object keyed by column name, when no row type is given. */
export type Row = Record<string, any>;

export interface QueryOptions extends ParseOptions {
  /** `'object'` (default): rows keyed by column name; `'array'`: rows as arrays in column order. */
  rowMode?: 'object' | 'array';
  /** Statement timeout sent to the gateway (never above the tenant's maximum); the client gives up one second after it. */
  timeoutMs?: number;
  /** Aborting cancels the request, and with it the statement on the server. */
  signal?: AbortSignalLike;
  /** Resolve to `{ rows, fields, command, rowCount }` instead of the rows alone. */
  fullResults?: boolean;
  /** Safe to run twice: retry it after a network error too (see README, "Retries"). */
  idempotent?: boolean;
}

/** What a query resolves to with `fullResults: true`. */
export interface FullResult<T> {
  rows: T[];
  fields: Field[];
  /** The first word of the command tag: `SELECT`, `INSERT`, … */
  command: string;
  /** Rows returned, inserted, updated or deleted; `null` for commands without a count. */
  rowCount: number | null;
}

/** SQL text with `$1..$n` placeholders and the values bound to them. */
export interface Statement {
  sql: string;
  params: readonly unknown[];
}

/** A piece of SQL built by a tagged template, `id` or `unsafe`; nests into other templates. */
export class Fragment {
  /** Made by the `sql` template, `sql.id` and `sql.unsafe`. */
  constructor(
    readonly strings: readonly string[],
    readonly values: readonly unknown[],
  ) {}
}

/**
 * Runs a query where it belongs: the client's `/v1/query`, or a transaction's; with `stream`,
 * as NDJSON, row by row.
 */
export interface Runner {
  (query: Query<any>): Promise<any>;
  (query: Query<any>, stream: true): AsyncGenerator<any, void, undefined>;
}

/** The row type of a query's result. */
export type RowOf<R> = R extends readonly (infer T)[] ? T : R extends FullResult<infer T> ? T : never;

/**
 * A statement that runs when it is awaited (`await`, `.then`), once: awaiting it again gives the
 * same result. A query built by a template also nests into other templates as a fragment.
 */
export class Query<R = Row[]> implements PromiseLike<R> {
  #result?: Promise<R>;

  /** Made by the `sql` template, `sql.query` and `sql.unsafe`. */
  constructor(
    readonly source: Fragment | Statement,
    readonly options: QueryOptions,
    private readonly runner: Runner,
  ) {}

  then<A = R, B = never>(
    onfulfilled?: ((value: R) => A | PromiseLike<A>) | null,
    onrejected?: ((reason: any) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    this.#result ??= this.runner(this);
    return this.#result.then(onfulfilled, onrejected);
  }

  /**
   * The rows one at a time, as the gateway streams them (NDJSON, without `max_response_bytes`):
   * `for await (const row of sql`…`.stream())`. Read slowly and the query slows; `break`,
   * `return()` or the query's `signal` cancel the statement; a failure part way through throws
   * the `SluiceError` from the stream's last line.
   */
  stream(): AsyncGenerator<RowOf<R>, void, undefined> {
    return this.runner(this, true);
  }

  catch<B = never>(onrejected?: ((reason: any) => B | PromiseLike<B>) | null): Promise<R | B> {
    return this.then(undefined, onrejected);
  }

  finally(onfinally?: (() => void) | null): Promise<R> {
    return this.then().finally(onfinally);
  }
}

/** The statement a query sends: its text with `$n` placeholders, and its encoded params. */
export function toStatement({ source }: Query<unknown>): Statement {
  if (source instanceof Fragment) {
    const params: unknown[] = [];
    return { sql: compile(source, params), params };
  }
  return { sql: source.sql, params: source.params.map((value, i) => encodeParam(value, i + 1)) };
}

function compile(fragment: Fragment, params: unknown[]): string {
  let text = fragment.strings[0];
  fragment.values.forEach((value, i) => {
    const nested = value instanceof Query ? value.source : value;
    if (nested instanceof Fragment) {
      text += compile(nested, params);
    } else if (value instanceof Query) {
      // Its `$n` would need renumbering inside text we do not parse.
      throw new TypeError('a query built from text with $n placeholders cannot be nested in a template; build it with a template');
    } else {
      params.push(encodeParam(value, params.length + 1));
      text += '$' + params.length;
    }
    text += fragment.strings[i + 1];
  });
  return text;
}

/**
 * A quoted identifier: `id('users')` is `"users"`, `id(['app', 'users'])` is `"app"."users"`.
 * Quotes inside a name are doubled, so no name can end the identifier early.
 */
export function id(name: string | readonly string[]): Fragment {
  const parts = typeof name === 'string' ? [name] : name;
  if (!parts.length || parts.some((part) => typeof part !== 'string' || !part || part.includes('\0'))) {
    throw new TypeError('sql.id: an identifier is a non-empty string (or an array of them) without NUL characters');
  }
  return new Fragment([parts.map((part) => '"' + part.replace(/"/g, '""') + '"').join('.')], []);
}
