// Type-level tests, checked by `tsc --noEmit` (npm run typecheck): what the public types give,
// and what they refuse (each `@ts-expect-error` must be an error, or tsc fails).

import { createClient, SluiceError, type FullResult, type Fragment, type Query, type Row, type Transaction } from '@sluice/client';

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
function expect<T extends true>(): T | void {}

interface User {
  id: number;
  name: string;
}

const sql = createClient({ url: 'http://127.0.0.1:8080', apiKey: 'key' });

export async function rows() {
  // Generic rows: sql<User>`…` gives User[].
  const users = await sql<User>`select id, name from users where id = ${1}`;
  expect<Equal<typeof users, User[]>>();
  const untyped = await sql`select 1`;
  expect<Equal<typeof untyped, Row[]>>();
  const lazy = sql<User>`select 1`;
  expect<Equal<typeof lazy, Query<User[]>>>();

  // sql.query with text, with a template, and fullResults.
  const byText = await sql.query<User>('select * from users where id = $1', [1]);
  expect<Equal<typeof byText, User[]>>();
  const full = await sql.query<User>('select * from users', [], { fullResults: true });
  expect<Equal<typeof full, FullResult<User>>>();
  expect<Equal<typeof full.rowCount, number | null>>();
  const fromTemplate = await sql.query(sql<User>`select * from users`, { fullResults: true });
  expect<Equal<typeof fromTemplate, FullResult<User>>>();
  const tuples = await sql.query<[number, string]>('select id, name from users', [], { rowMode: 'array' });
  expect<Equal<typeof tuples, [number, string][]>>();

  // Batches keep each query's type, in order.
  const [inserted, counted, fullOne] = await sql.batch([
    sql<{ id: number }>`insert into users (name) values (${'ada'}) returning id`,
    sql<{ n: number }>`select count(*)::int as n from users`,
    sql.query<User>('select * from users', [], { fullResults: true }),
  ]);
  expect<Equal<typeof inserted, { id: number }[]>>();
  expect<Equal<typeof counted, { n: number }[]>>();
  expect<Equal<typeof fullOne, FullResult<User>>>();

  // Transactions return what the callback returns; tx has the same template.
  const n = await sql.transaction(async (tx) => {
    expect<Equal<typeof tx, Transaction>>();
    const [row] = await tx<{ n: number }>`select 1 as n`;
    return row.n;
  }, { isolation: 'serializable', readOnly: true });
  expect<Equal<typeof n, number>>();

  // Fragments and identifiers.
  const where: Fragment | Query<Row[]> = sql`where id = ${1}`;
  const table: Fragment = sql.id(['public', 'users']);
  await sql`select * from ${table} ${where}`;
  await sql.unsafe<User>('select * from users');

  // Errors are typed.
  try {
    await sql`select 1`;
  } catch (error) {
    if (error instanceof SluiceError) {
      const fields: [string, number | undefined, number | undefined, string | undefined, string | undefined, number | undefined] = [
        error.kind,
        error.status,
        error.retryAfter,
        error.code,
        error.constraint,
        error.statementIndex,
      ];
      void fields;
    }
  }
}

export async function refusals() {
  // @ts-expect-error: sql is a tagged template, not a function of a string.
  sql('select 1');
  // @ts-expect-error: url is required (and apiKey or authToken, checked when called).
  createClient({ apiKey: 'k' });
  // @ts-expect-error: isolation levels are Postgres's.
  await sql.batch([], { isolation: 'snapshot' });
  // @ts-expect-error: a transaction's batch has no isolation of its own.
  await sql.transaction((tx) => tx.batch([], { isolation: 'serializable' }));
  // @ts-expect-error: rowMode is 'object' or 'array'.
  await sql.query('select 1', [], { rowMode: 'tuple' });
  // @ts-expect-error: the rows of a typed query have only the given fields.
  (await sql<User>`select * from users`)[0].email;
}

export async function runtimeOptions(options: import('@sluice/client').QueryOptions) {
  // fullResults known only at run time: either shape.
  const result = await sql.query<User>('select * from users', [], options);
  expect<Equal<typeof result, User[] | FullResult<User>>>();
}
