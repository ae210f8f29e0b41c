// A Prisma 7 driver adapter over sluice (`@sluice/client/prisma`): Prisma's query compiler hands
// it SQL with `$n` placeholders and typed arguments; each query is one gateway call, and Prisma's
// transactions (`$transaction`, both forms) are sluice interactive transactions. Values are
// shaped the way `@prisma/adapter-pg` shapes them (Prisma's engine expects exactly that), from
// the gateway's JSON and its field OIDs.

import {
  ColumnTypeEnum,
  DriverAdapterError,
  type ArgType,
  type ColumnType,
  type ConnectionInfo,
  type IsolationLevel,
  type SqlDriverAdapter,
  type SqlDriverAdapterFactory,
  type SqlQuery,
  type SqlResultSet,
  type Transaction as PrismaTransaction,
} from '@prisma/driver-adapter-utils';
import { createClient, type ClientOptions, type Sql, type Transaction } from './client.js';
import { SluiceError } from './error.js';
import type { FullResult } from './query.js';
import type { Field } from './values.js';

export interface PrismaSluiceOptions {
  /** The Postgres schema Prisma's models live in (Prisma's `schema` of the connection info). */
  schema?: string;
}

const adapterName = '@sluice/client/prisma';

/**
 * `new PrismaClient({ adapter: new PrismaSluice(sql) })`, with `sql` from `createClient` (or
 * the client's options, to make one).
 */
export class PrismaSluice implements SqlDriverAdapterFactory {
  readonly provider = 'postgres';
  readonly adapterName = adapterName;
  readonly #client: Sql;

  constructor(
    client: Sql | ClientOptions,
    private readonly options: PrismaSluiceOptions = {},
  ) {
    this.#client = typeof client === 'function' ? client : createClient(client);
  }

  async connect(): Promise<SqlDriverAdapter> {
    return new SluiceAdapter(this.#client, this.options);
  }
}

class SluiceQueryable {
  readonly provider = 'postgres';
  readonly adapterName = adapterName;

  constructor(protected readonly sql: Sql | Transaction) {}

  async queryRaw(query: SqlQuery): Promise<SqlResultSet> {
    const { fields, rows } = await this.run(query);
    const convert = fields.map(converter);
    for (const row of rows) {
      for (let i = 0; i < convert.length; i++) {
        const value = row[i];
        if (value !== null && convert[i]) row[i] = convert[i]!(value);
      }
    }
    return { columnNames: fields.map((field) => field.name), columnTypes: fields.map(columnType), rows };
  }

  async executeRaw(query: SqlQuery): Promise<number> {
    return (await this.run(query)).rowCount ?? 0;
  }

  protected async run({ sql, args, argTypes }: SqlQuery): Promise<FullResult<unknown[]>> {
    const params = args.map((arg, i) => toParam(arg, argTypes[i]));
    try {
      // Dates stay Postgres's text, which Prisma's engine reads (after `normalize*`).
      return await this.sql.query<unknown[]>(sql, params, { rowMode: 'array', dates: 'string', fullResults: true });
    } catch (error) {
      throw toPrismaError(error);
    }
  }
}

class SluiceAdapter extends SluiceQueryable implements SqlDriverAdapter {
  constructor(
    protected override readonly sql: Sql,
    private readonly options: PrismaSluiceOptions,
  ) {
    super(sql);
  }

  async executeScript(script: string): Promise<void> {
    try {
      await this.sql.script(script);
    } catch (error) {
      throw toPrismaError(error);
    }
  }

  /**
   * Prisma begins and ends a transaction in separate calls, while `sql.transaction` takes a
   * callback: the callback hands `tx` over and waits for `commit` or `rollback` to settle it.
   */
  startTransaction(isolationLevel?: IsolationLevel): Promise<PrismaTransaction> {
    if (isolationLevel === 'SNAPSHOT') {
      return Promise.reject(new DriverAdapterError({ kind: 'InvalidIsolationLevel', level: isolationLevel }));
    }
    return new Promise((ready, fail) => {
      let finish!: (commit: boolean) => void;
      const done = this.sql.transaction(
        (tx) => {
          const settled = new Promise((commit, rollback) => {
            finish = (ok) => (ok ? commit(undefined) : rollback(ROLLBACK));
          });
          ready(new SluiceTransaction(tx, finish, done));
          return settled;
        },
        { isolation: isolationLevel?.toLowerCase() as Lowercase<Exclude<IsolationLevel, 'SNAPSHOT'>> | undefined },
      );
      // Settles `startTransaction` when BEGIN itself failed; after `ready`, a no-op.
      done.catch((error) => fail(error === ROLLBACK ? error : toPrismaError(error)));
    });
  }

  getConnectionInfo(): ConnectionInfo {
    return { schemaName: this.options.schema, supportsRelationJoins: true };
  }

  async dispose(): Promise<void> {}
}

/** Rejects the transaction callback so that `sql.transaction` rolls back. */
const ROLLBACK = Symbol('rollback');

class SluiceTransaction extends SluiceQueryable implements PrismaTransaction {
  // Prisma calls `commit`/`rollback` itself rather than sending COMMIT as a query.
  readonly options = { usePhantomQuery: true };

  constructor(
    tx: Transaction,
    private readonly finish: (commit: boolean) => void,
    private readonly done: Promise<unknown>,
  ) {
    super(tx);
  }

  commit(): Promise<void> {
    return this.end(true);
  }

  rollback(): Promise<void> {
    return this.end(false);
  }

  async createSavepoint(name: string): Promise<void> {
    await this.sql`savepoint ${this.sql.id(name)}`;
  }

  async rollbackToSavepoint(name: string): Promise<void> {
    await this.sql`rollback to savepoint ${this.sql.id(name)}`;
  }

  async releaseSavepoint(name: string): Promise<void> {
    await this.sql`release savepoint ${this.sql.id(name)}`;
  }

  private async end(commit: boolean): Promise<void> {
    this.finish(commit);
    try {
      await this.done;
    } catch (error) {
      if (error !== ROLLBACK) throw toPrismaError(error);
    }
  }
}

/** Prisma's argument types to the gateway's JSON parameters. */
function toParam(arg: unknown, type: ArgType | undefined): unknown {
  if (arg === null || arg === undefined) return null;
  if (Array.isArray(arg) && type?.arity === 'list') return arg.map((value) => toParam(value, type));
  if (typeof arg === 'string' && type?.scalarType === 'datetime') arg = new Date(arg);
  if (arg instanceof Date) {
    switch (type?.dbType) {
      case 'TIME':
      case 'TIMETZ':
        return arg.toISOString().slice(11, 23);
      case 'DATE':
        return arg.toISOString().slice(0, 10);
      default:
        return arg.toISOString().replace('T', ' ').replace('Z', '');
    }
  }
  if (typeof arg === 'string' && type?.scalarType === 'bytes') {
    // Base64 from Prisma; atob is in every runtime the SDK supports.
    return Uint8Array.from(atob(arg), (c) => c.charCodeAt(0));
  }
  if (ArrayBuffer.isView(arg)) return new Uint8Array(arg.buffer, arg.byteOffset, arg.byteLength);
  return arg;
}

const COLUMN_TYPES: Record<number, ColumnType> = {
  21: ColumnTypeEnum.Int32,
  23: ColumnTypeEnum.Int32,
  20: ColumnTypeEnum.Int64,
  26: ColumnTypeEnum.Int64,
  700: ColumnTypeEnum.Float,
  701: ColumnTypeEnum.Double,
  16: ColumnTypeEnum.Boolean,
  1082: ColumnTypeEnum.Date,
  1083: ColumnTypeEnum.Time,
  1266: ColumnTypeEnum.Time,
  1114: ColumnTypeEnum.DateTime,
  1184: ColumnTypeEnum.DateTime,
  1700: ColumnTypeEnum.Numeric,
  790: ColumnTypeEnum.Numeric,
  114: ColumnTypeEnum.Json,
  3802: ColumnTypeEnum.Json,
  2950: ColumnTypeEnum.Uuid,
  17: ColumnTypeEnum.Bytes,
  18: ColumnTypeEnum.Character,
  1005: ColumnTypeEnum.Int32Array,
  1007: ColumnTypeEnum.Int32Array,
  1016: ColumnTypeEnum.Int64Array,
  1028: ColumnTypeEnum.Int64Array,
  1021: ColumnTypeEnum.FloatArray,
  1022: ColumnTypeEnum.DoubleArray,
  1231: ColumnTypeEnum.NumericArray,
  791: ColumnTypeEnum.NumericArray,
  1000: ColumnTypeEnum.BooleanArray,
  1002: ColumnTypeEnum.CharacterArray,
  1182: ColumnTypeEnum.DateArray,
  1183: ColumnTypeEnum.TimeArray,
  1115: ColumnTypeEnum.DateTimeArray,
  1185: ColumnTypeEnum.DateTimeArray,
  199: ColumnTypeEnum.JsonArray,
  3807: ColumnTypeEnum.JsonArray,
  1001: ColumnTypeEnum.BytesArray,
  2951: ColumnTypeEnum.UuidArray,
};

/** From the field's OID; text, varchar, enums, extension types and the rest are text. */
function columnType({ oid, type }: Field): ColumnType {
  return COLUMN_TYPES[oid] ?? (type[0] === '_' ? ColumnTypeEnum.TextArray : ColumnTypeEnum.Text);
}

type Convert = (value: any) => unknown;

/** adapter-pg's value normalisation, from the gateway's JSON instead of Postgres's text. */
function converter({ oid }: Field): Convert | undefined {
  switch (oid) {
    case 1114:
      return timestamp;
    case 1115:
      return each(timestamp);
    case 1184:
      return timestamptz;
    case 1185:
      return each(timestamptz);
    case 1266:
      return (time: string) => time.replace(/[+-]\d{2}(:\d{2})?$/, '');
    case 790:
      return (money: string) => money.slice(1);
    case 791:
      return each((money: string) => money.slice(1));
    // Prisma's engine parses JSON itself: give it the text back.
    case 114:
    case 3802:
      return (json: unknown) => JSON.stringify(json);
    case 199:
    case 3807:
      return each((json: unknown) => JSON.stringify(json));
  }
  return undefined;
}

function timestamp(time: string): string {
  return `${time.replace(' ', 'T')}+00:00`;
}

function timestamptz(time: string): string {
  return time.replace(' ', 'T').replace(/[+-]\d{2}(:\d{2})?$/, '+00:00');
}

function each(convert: Convert): Convert {
  const walk = (value: unknown): unknown => (Array.isArray(value) ? value.map(walk) : value === null ? null : convert(value));
  return walk;
}

/** A gateway error as Prisma's error kinds (P2002 and the rest come from these). */
function toPrismaError(error: unknown): unknown {
  if (!(error instanceof SluiceError) || error.kind !== 'database' || !error.code) return error;
  const { code, message, detail, column, constraint, table, severity, hint } = error;
  const fields = detail?.match(/Key \(([^)]+)\)/)?.[1]?.split(', ');
  const keys = column ? { fields: [column] } : constraint ? { index: constraint } : undefined;
  const original = { originalCode: code, originalMessage: message };
  switch (code) {
    case '22001':
      return new DriverAdapterError({ kind: 'LengthMismatch', column, ...original });
    case '22003':
      return new DriverAdapterError({ kind: 'ValueOutOfRange', cause: message, ...original });
    case '22P02':
      return new DriverAdapterError({ kind: 'InvalidInputValue', message, ...original });
    case '23505':
      return new DriverAdapterError({
        kind: 'UniqueConstraintViolation',
        constraint: constraint ? { index: constraint } : fields ? { fields } : undefined,
        table,
        ...original,
      } as any);
    case '23502':
      return new DriverAdapterError({ kind: 'NullConstraintViolation', constraint: column ? { fields: [column] } : undefined, ...original });
    case '23503':
      return new DriverAdapterError({ kind: 'ForeignKeyConstraintViolation', constraint: keys, ...original });
    case '23001':
      return new DriverAdapterError({ kind: 'RestrictViolation', constraint: keys, ...original } as any);
    case '40001':
    case '40P01':
      return new DriverAdapterError({ kind: 'TransactionWriteConflict', ...original });
    case '42P01':
      return new DriverAdapterError({ kind: 'TableDoesNotExist', table: message.split(' ')[1]?.split('"')[1], ...original });
    case '42703':
      return new DriverAdapterError({ kind: 'ColumnNotFound', column: message.match(/^column (.+) does not exist$/)?.[1], ...original });
  }
  return new DriverAdapterError({ kind: 'postgres', code, severity: severity ?? 'ERROR', message, detail, column, hint, ...original });
}
