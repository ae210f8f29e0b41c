// Kysely dialect: Postgres's SQL compiler, adapter and introspector from Kysely itself, with a
// driver that sends each compiled query through a sluice client. Kysely's transactions become
// sluice interactive transactions; outside one, a "connection" is only the client, since every
// statement is its own HTTP call (session state such as SET does not carry over between them).
// `.stream()` reads the gateway's NDJSON stream, in or out of a transaction.

import { PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler } from 'kysely';
import type {
  CompiledQuery,
  DatabaseConnection,
  DatabaseIntrospector,
  Dialect,
  DialectAdapter,
  Driver,
  Kysely,
  QueryCompiler,
  QueryResult,
  TransactionSettings,
} from 'kysely';
import type { Sql, Transaction } from './client.js';

export interface SluiceDialectConfig {
  /** The client made by `createClient`; share one per module scope. */
  client: Sql;
}

/** `new Kysely<DB>({ dialect: new SluiceDialect({ client: sql }) })` */
export class SluiceDialect implements Dialect {
  readonly #client: Sql;

  constructor({ client }: SluiceDialectConfig) {
    this.#client = client;
  }

  createAdapter(): DialectAdapter {
    return new PostgresAdapter();
  }

  createDriver(): Driver {
    return new SluiceDriver(this.#client);
  }

  createQueryCompiler(): QueryCompiler {
    return new PostgresQueryCompiler();
  }

  createIntrospector(db: Kysely<any>): DatabaseIntrospector {
    return new PostgresIntrospector(db);
  }
}

class SluiceDriver implements Driver {
  constructor(private readonly client: Sql) {}

  async init(): Promise<void> {}

  async acquireConnection(): Promise<SluiceConnection> {
    return new SluiceConnection(this.client);
  }

  beginTransaction(connection: SluiceConnection, settings: TransactionSettings): Promise<void> {
    return connection.begin(settings);
  }

  commitTransaction(connection: SluiceConnection): Promise<void> {
    return connection.end(true);
  }

  rollbackTransaction(connection: SluiceConnection): Promise<void> {
    return connection.end(false);
  }

  async savepoint(connection: SluiceConnection, name: string): Promise<void> {
    await connection.run('savepoint ', name);
  }

  async rollbackToSavepoint(connection: SluiceConnection, name: string): Promise<void> {
    await connection.run('rollback to savepoint ', name);
  }

  async releaseSavepoint(connection: SluiceConnection, name: string): Promise<void> {
    await connection.run('release savepoint ', name);
  }

  async releaseConnection(): Promise<void> {}

  async destroy(): Promise<void> {}
}

/** Rejects the transaction callback so that `sql.transaction` rolls back. */
const ROLLBACK = Symbol('rollback');

class SluiceConnection implements DatabaseConnection {
  #tx?: Transaction;
  #finish?: (commit: boolean) => void;
  #done?: Promise<unknown>;

  constructor(private readonly client: Sql) {}

  /**
   * Kysely begins and ends a transaction in separate calls, while `sql.transaction` takes a
   * callback: the callback here only hands `tx` over and waits for `end` to settle it.
   */
  begin({ isolationLevel, accessMode }: TransactionSettings): Promise<void> {
    return new Promise((ready, fail) => {
      this.#done = this.client.transaction(
        (tx) => {
          this.#tx = tx;
          ready();
          return new Promise((commit, rollback) => {
            this.#finish = (ok) => (ok ? commit(undefined) : rollback(ROLLBACK));
          });
        },
        {
          isolation: isolationLevel as Exclude<typeof isolationLevel, 'snapshot'>,
          readOnly: accessMode && accessMode === 'read only',
        },
      );
      // Settles `begin` when BEGIN itself failed; after `ready`, this is a no-op.
      this.#done.catch(fail);
    });
  }

  async end(commit: boolean): Promise<void> {
    const done = this.#done;
    this.#finish?.(commit);
    this.#tx = this.#finish = this.#done = undefined;
    try {
      await done;
    } catch (error) {
      if (error !== ROLLBACK) throw error;
    }
  }

  /** `command` followed by the quoted savepoint name. */
  async run(command: string, savepoint: string): Promise<void> {
    const sql = this.#tx ?? this.client;
    await sql`${sql.unsafe(command)}${sql.id(savepoint)}`;
  }

  async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    const { rows, command, rowCount } = await (this.#tx ?? this.client).query<R>(compiled.sql, compiled.parameters, { fullResults: true });
    const changed = /^(INSERT|UPDATE|DELETE|MERGE)$/.test(command) && rowCount !== null;
    return { rows, numAffectedRows: changed ? BigInt(rowCount) : undefined };
  }

  /** Kysely's `.stream(chunkSize)`: the query's NDJSON stream, `chunkSize` rows at a time. */
  async *streamQuery<R>(compiled: CompiledQuery, chunkSize = 100): AsyncIterableIterator<QueryResult<R>> {
    let rows: R[] = [];
    for await (const row of (this.#tx ?? this.client).query<R>(compiled.sql, compiled.parameters).stream()) {
      rows.push(row);
      if (rows.length >= chunkSize) {
        yield { rows };
        rows = [];
      }
    }
    if (rows.length) yield { rows };
  }
}
