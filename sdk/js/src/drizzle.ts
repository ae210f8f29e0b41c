// A Drizzle driver for sluice, built on drizzle-orm's own session and transaction classes as its
// `node-postgres` and `neon-serverless` drivers are: `db.transaction()` is a sluice interactive
// transaction (`/v1/transactions`), a nested `tx.transaction()` a savepoint, `db.batch([...])` one
// atomic `/v1/batch`. `migrate` lives in `./drizzle-migrator.ts` (`@sluice/client/drizzle/migrator`)
// because drizzle-orm's migration reader needs Node's `fs`, which edge runtimes lack.

import {
  DefaultLogger,
  NoopLogger,
  createTableRelationsHelpers,
  entityKind,
  extractTablesRelationalConfig,
  fillPlaceholders,
  // @ts-expect-error: internal in drizzle-orm's types, exported at run time; every driver maps rows with it.
  mapResultRow,
  sql as dsql,
  type DrizzleConfig,
  type ExtractTablesWithRelations,
  type Logger,
  type Query as DrizzleQuery,
  type RelationalSchemaConfig,
  type TablesRelationalConfig,
} from 'drizzle-orm';
import type { BatchItem, BatchResponse } from 'drizzle-orm/batch';
import type { Cache } from 'drizzle-orm/cache/core';
import type { WithCacheConfig } from 'drizzle-orm/cache/core/types';
import {
  PgDatabase,
  PgDialect,
  PgPreparedQuery,
  PgSession,
  PgTransaction,
  type PgQueryResultHKT,
  type PgTransactionConfig,
  type PreparedQueryConfig,
  type SelectedFieldsOrdered,
} from 'drizzle-orm/pg-core';
import type { Sql, Transaction } from './client.js';
import type { FullResult, Query, QueryOptions } from './query.js';
import type { ClientBatchOptions } from './sql.js';

export { drizzleCallback } from './drizzle-proxy.js';

/** What `db.execute(sql`…`)` resolves to, as with node-postgres: `{ rows, fields, command, rowCount }`. */
export interface SluiceQueryResultHKT extends PgQueryResultHKT {
  type: FullResult<this['row'] extends Record<string, unknown> ? this['row'] : Record<string, any>>;
}

type Client = Sql | Transaction;
type QueryMetadata = { type: 'select' | 'update' | 'delete' | 'insert'; tables: string[] } | undefined;
type Mapper = (rows: unknown[][]) => unknown;

/**
 * Values stay as the gateway sent them, dates as strings: Drizzle's column types map them
 * (`mode: 'date'` and the like), as they do for node-postgres.
 */
function statement(client: Client, text: string, params: unknown[], arrays: boolean): Query<FullResult<unknown>> {
  return client.query(text, params, { rowMode: arrays ? 'array' : 'object', dates: 'string', fullResults: true } satisfies QueryOptions);
}

export class SluicePreparedQuery<T extends PreparedQueryConfig> extends PgPreparedQuery<T> {
  static override readonly [entityKind]: string = 'SluicePreparedQuery';

  constructor(
    private readonly client: Client,
    query: DrizzleQuery,
    private readonly logger: Logger,
    cache: Cache | undefined,
    queryMetadata: QueryMetadata,
    cacheConfig: WithCacheConfig | undefined,
    private readonly fields: SelectedFieldsOrdered | undefined,
    private readonly arrays: boolean,
    private readonly customResultMapper?: Mapper,
  ) {
    super(query, cache, queryMetadata, cacheConfig);
  }

  /** The statement this query sends, for a batch. */
  build(placeholderValues: Record<string, unknown> = {}): Query<FullResult<unknown>> {
    const params = fillPlaceholders(this.query.params, placeholderValues);
    this.logger.logQuery(this.query.sql, params);
    return statement(this.client, this.query.sql, params, this.mapped());
  }

  async execute(placeholderValues: Record<string, unknown> = {}): Promise<T['execute']> {
    const params = fillPlaceholders(this.query.params, placeholderValues);
    this.logger.logQuery(this.query.sql, params);
    // `queryWithCache` is internal to drizzle-orm's types, but every driver calls it.
    const result = await (this as any).queryWithCache(this.query.sql, params, () => statement(this.client, this.query.sql, params, this.mapped()));
    return this.mapResult(result) as T['execute'];
  }

  async all(placeholderValues: Record<string, unknown> = {}): Promise<T['all']> {
    const params = fillPlaceholders(this.query.params, placeholderValues);
    this.logger.logQuery(this.query.sql, params);
    return (await statement(this.client, this.query.sql, params, false)).rows as T['all'];
  }

  override mapResult(response: unknown): unknown {
    const result = response as FullResult<unknown[]>;
    if (this.customResultMapper) return this.customResultMapper(result.rows);
    if (!this.fields) return result;
    return result.rows.map((row) => mapResultRow(this.fields!, row, (this as any).joinsNotNullableMap));
  }

  /** @internal drizzle's relational queries ask for this. */
  isResponseInArrayMode(): boolean {
    return this.arrays;
  }

  /** Rows come as arrays when Drizzle maps them by position. */
  private mapped(): boolean {
    return !!(this.fields || this.customResultMapper);
  }
}

export interface SluiceSessionOptions {
  logger?: Logger;
  cache?: Cache;
}

export class SluiceSession<TFullSchema extends Record<string, unknown>, TSchema extends TablesRelationalConfig> extends PgSession<
  SluiceQueryResultHKT,
  TFullSchema,
  TSchema
> {
  static override readonly [entityKind]: string = 'SluiceSession';
  private readonly logger: Logger;

  constructor(
    readonly client: Client,
    dialect: PgDialect,
    private readonly schema: RelationalSchemaConfig<TSchema> | undefined,
    private readonly options: SluiceSessionOptions = {},
  ) {
    super(dialect);
    this.logger = options.logger ?? new NoopLogger();
  }

  prepareQuery<T extends PreparedQueryConfig = PreparedQueryConfig>(
    query: DrizzleQuery,
    fields: SelectedFieldsOrdered | undefined,
    _name: string | undefined,
    isResponseInArrayMode: boolean,
    customResultMapper?: (rows: unknown[][]) => T['execute'],
    queryMetadata?: QueryMetadata,
    cacheConfig?: WithCacheConfig,
  ): PgPreparedQuery<T> {
    return new SluicePreparedQuery<T>(
      this.client,
      query,
      this.logger,
      this.options.cache,
      queryMetadata,
      cacheConfig,
      fields,
      isResponseInArrayMode,
      customResultMapper,
    );
  }

  /** Several Drizzle queries as one `/v1/batch` (or one batch inside the transaction). */
  async batch(queries: readonly BatchItem<'pg'>[], options?: ClientBatchOptions): Promise<unknown[]> {
    const prepared = queries.map((query) => (query as unknown as { _prepare(): SluicePreparedQuery<PreparedQueryConfig> })._prepare());
    const results = await this.client.batch(
      prepared.map((p) => p.build()),
      options,
    );
    return results.map((result, i) => prepared[i].mapResult(result));
  }

  override async transaction<T>(
    transaction: (tx: SluiceTransaction<TFullSchema, TSchema>) => Promise<T>,
    config: PgTransactionConfig = {},
  ): Promise<T> {
    const client = this.client as Sql;
    if (typeof client.transaction !== 'function') {
      throw new TypeError('db.transaction: this database runs inside a transaction already; use tx.transaction() for a savepoint');
    }
    return client.transaction(
      (tx) => {
        const session = new SluiceSession<TFullSchema, TSchema>(tx, this.dialect, this.schema, this.options);
        return transaction(new SluiceTransaction<TFullSchema, TSchema>(this.dialect, session, this.schema));
      },
      {
        isolation: config.isolationLevel,
        readOnly: config.accessMode === undefined ? undefined : config.accessMode === 'read only',
        deferrable: config.deferrable,
      },
    );
  }
}

export class SluiceTransaction<TFullSchema extends Record<string, unknown>, TSchema extends TablesRelationalConfig> extends PgTransaction<
  SluiceQueryResultHKT,
  TFullSchema,
  TSchema
> {
  static override readonly [entityKind]: string = 'SluiceTransaction';

  /** A savepoint: released when `transaction` returns, rolled back to when it throws. */
  override async transaction<T>(transaction: (tx: SluiceTransaction<TFullSchema, TSchema>) => Promise<T>): Promise<T> {
    const savepoint = `sp${this.nestedIndex + 1}`;
    // `dialect` and `session` are internal in drizzle-orm's types.
    const { dialect, session } = this as any;
    const tx = new SluiceTransaction<TFullSchema, TSchema>(dialect, session, this.schema, this.nestedIndex + 1);
    await tx.execute(dsql.raw(`savepoint ${savepoint}`));
    try {
      const result = await transaction(tx);
      await tx.execute(dsql.raw(`release savepoint ${savepoint}`));
      return result;
    } catch (error) {
      await tx.execute(dsql.raw(`rollback to savepoint ${savepoint}`));
      throw error;
    }
  }

  /** Several queries as one call on the transaction. */
  batch<U extends BatchItem<'pg'>, T extends Readonly<[U, ...U[]]>>(queries: T): Promise<BatchResponse<T>> {
    return ((this as any).session as SluiceSession<TFullSchema, TSchema>).batch(queries) as Promise<BatchResponse<T>>;
  }
}

export class SluiceDatabase<TSchema extends Record<string, unknown> = Record<string, never>> extends PgDatabase<SluiceQueryResultHKT, TSchema> {
  static override readonly [entityKind]: string = 'SluiceDatabase';
  /** The sluice client (or transaction) underneath. */
  declare $client: Client;

  /** An interactive transaction; `tx` has `batch` and nested `transaction` (a savepoint). */
  override transaction<T>(
    transaction: (tx: SluiceTransaction<TSchema, ExtractTablesWithRelations<TSchema>>) => Promise<T>,
    config?: PgTransactionConfig,
  ): Promise<T> {
    return super.transaction(transaction as any, config);
  }

  /** Runs the queries in one request and one transaction: all commit, or none. */
  batch<U extends BatchItem<'pg'>, T extends Readonly<[U, ...U[]]>>(queries: T, options?: ClientBatchOptions): Promise<BatchResponse<T>> {
    return ((this as any).session as SluiceSession<TSchema, any>).batch(queries, options) as Promise<BatchResponse<T>>;
  }
}

/**
 * `drizzle(sql, { schema })`: a Drizzle database over a sluice client. `db.transaction(async (tx)
 * => …, { isolationLevel, accessMode })` is an interactive transaction.
 */
export function drizzle<TSchema extends Record<string, unknown> = Record<string, never>>(
  client: Client,
  config: DrizzleConfig<TSchema> = {},
): SluiceDatabase<TSchema> {
  const dialect = new PgDialect({ casing: config.casing });
  const logger = config.logger === true ? new DefaultLogger() : config.logger || undefined;
  let schema: RelationalSchemaConfig<TablesRelationalConfig> | undefined;
  if (config.schema) {
    const tables = extractTablesRelationalConfig(config.schema, createTableRelationsHelpers);
    schema = { fullSchema: config.schema, schema: tables.tables, tableNamesMap: tables.tableNamesMap };
  }
  const session = new SluiceSession(client, dialect, schema, { logger, cache: config.cache });
  const db = new SluiceDatabase(dialect, session, schema as any) as SluiceDatabase<TSchema>;
  db.$client = client;
  (db as any).$cache = config.cache;
  if (config.cache) (config.cache as any).invalidate = config.cache.onMutate;
  return db;
}
