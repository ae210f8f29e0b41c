// Drizzle over sluice through drizzle-orm's `pg-proxy` driver: the entry point of SDK 0.1
// (`@sluice/client/drizzle-proxy` now), kept for code written against it. New code uses
// `@sluice/client/drizzle`, whose `db.transaction()` works. A callback sends each statement to the
// gateway (rows as arrays for `method: 'all'`, which Drizzle maps by column position), and
// `db.batch`, which pg-proxy lacks, sends several Drizzle queries as one atomic `/v1/batch`.

import type { DrizzleConfig } from 'drizzle-orm';
import type { BatchItem, BatchResponse } from 'drizzle-orm/batch';
import { drizzle as pgProxy, type PgRemoteDatabase, type RemoteCallback } from 'drizzle-orm/pg-proxy';
import type { Sql, Transaction } from './client.js';
import type { Query } from './query.js';
import type { ClientBatchOptions } from './sql.js';

/** A pg-proxy database with `batch`. */
export type SluiceDrizzleDatabase<TSchema extends Record<string, unknown> = Record<string, never>> = PgRemoteDatabase<TSchema> & {
  /** Runs the queries in one request and one transaction: all commit, or none. */
  batch<U extends BatchItem<'pg'>, T extends Readonly<[U, ...U[]]>>(queries: T, options?: ClientBatchOptions): Promise<BatchResponse<T>>;
};

/**
 * The callback of `drizzle(callback)` from `drizzle-orm/pg-proxy`. Values stay as the gateway
 * sent them, dates as strings: Drizzle's column types do their own mapping.
 */
export function drizzleCallback(sql: Sql | Transaction): RemoteCallback {
  return async (text, params, method) => ({ rows: await statement(sql, text, params, method) });
}

function statement(sql: Sql | Transaction, text: string, params: unknown[], method: 'all' | 'execute'): Query<unknown[]> {
  return sql.query(text, params, { rowMode: method === 'all' ? 'array' : 'object', dates: 'string' });
}

/**
 * `drizzle(sql, { schema })`: a Drizzle database over a sluice client, or over `tx` inside
 * `sql.transaction(async (tx) => { const txdb = drizzle(tx, { schema }); … })`.
 */
export function drizzle<TSchema extends Record<string, unknown> = Record<string, never>>(
  sql: Sql | Transaction,
  config?: DrizzleConfig<TSchema>,
): SluiceDrizzleDatabase<TSchema> {
  const send = drizzleCallback(sql);
  // While `batch` starts its queries, their statements are collected here instead of sent.
  let collecting: Pending[] | undefined;
  const db = pgProxy<TSchema>(
    (text, params, method) =>
      collecting ? new Promise((resolve, reject) => collecting!.push({ text, params, method, resolve, reject })) : send(text, params, method),
    config,
  );
  const batch = (queries: readonly BatchItem<'pg'>[], options?: ClientBatchOptions) => {
    const pending: Pending[] = (collecting = []);
    let results: Promise<unknown>[];
    try {
      // Drizzle hands a query's statement to the callback synchronously when it starts, so
      // nothing else can run (and be collected) in between.
      results = queries.map((query) => (query as unknown as { execute(): Promise<unknown> }).execute());
    } finally {
      collecting = undefined;
    }
    const sent = pending.length === queries.length ? sql.batch(pending.map((p) => statement(sql, p.text, p.params, p.method)), options) : undefined;
    if (!sent) {
      const error = new Error('db.batch: this drizzle-orm version did not start the queries synchronously; run them one by one');
      pending.forEach((p) => p.reject(error));
      return Promise.reject(error);
    }
    sent.then(
      (rows) => pending.forEach((p, i) => p.resolve({ rows: rows[i] })),
      (error) => pending.forEach((p) => p.reject(error)),
    );
    return Promise.all(results);
  };
  return Object.assign(db, { batch }) as SluiceDrizzleDatabase<TSchema>;
}

interface Pending {
  text: string;
  params: unknown[];
  method: 'all' | 'execute';
  resolve(result: { rows: unknown[] }): void;
  reject(error: unknown): void;
}
