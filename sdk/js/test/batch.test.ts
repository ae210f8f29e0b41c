// `sql.batch` → `/v1/batch`: several statements, one request, one atomic transaction.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SluiceError } from '@sluice/client';
import { client, recordingFetch, tableName } from './harness.js';

const sql = client();
const table = tableName('batch');

describe('batch', () => {
  before(async () => {
    await sql`create table ${sql.id(table)} (id int primary key, note text)`;
  });
  after(async () => {
    await sql`drop table if exists ${sql.id(table)}`;
  });

  test('runs the statements in order and returns each result', async () => {
    const { fetch, sent } = recordingFetch();
    const recorded = client({ fetch });
    const [inserted, rows] = await recorded.batch([
      recorded<{ id: number }>`insert into ${sql.id(table)} values (${1}, ${'one'}), (${2}, ${'two'}) returning id`,
      recorded<{ n: number }>`select count(*)::int as n from ${sql.id(table)}`,
    ]);
    assert.deepEqual(inserted, [{ id: 1 }, { id: 2 }]);
    assert.deepEqual(rows, [{ n: 2 }]);
    assert.equal(sent.length, 1);
    assert.match(sent[0].url, /\/v1\/batch$/);
    assert.deepEqual(sent[0].body.statements[0], {
      sql: `insert into "${table}" values ($1, $2), ($3, $4) returning id`,
      params: [1, 'one', 2, 'two'],
    });
  });

  test('each query keeps its own options: rowMode, fullResults, parsers', async () => {
    const [full, arrays, parsed] = await sql.batch([
      sql.query(`update ${table} set note = $1 where id = $2`, ['uno', 1], { fullResults: true }),
      sql.query(`select id, note from ${table} order by id`, [], { rowMode: 'array' }),
      sql.query(sql`select 2.5::numeric as n`, { types: { numeric: Number } }),
    ]);
    assert.equal(full.command, 'UPDATE');
    assert.equal(full.rowCount, 1);
    assert.deepEqual(arrays, [[1, 'uno'], [2, 'two']]);
    assert.deepEqual(parsed, [{ n: 2.5 }]);
  });

  test('is atomic: a failing statement rolls back the others and names its index', async () => {
    const error = await sql
      .batch([sql`insert into ${sql.id(table)} values (${10}, ${'ten'})`, sql`insert into ${sql.id(table)} values (${1}, ${'dup'})`])
      .catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.equal(error.kind, 'database');
    assert.equal(error.code, '23505');
    assert.equal(error.statementIndex, 1);
    assert.deepEqual(await sql`select id from ${sql.id(table)} where id = ${10}`, []);
  });

  test('isolation and readOnly set the transaction', async () => {
    const [[isolation], [readOnly]] = await sql.batch([sql`show transaction_isolation`, sql`show transaction_read_only`], {
      isolation: 'serializable',
      readOnly: true,
    });
    assert.deepEqual(isolation, { transaction_isolation: 'serializable' });
    assert.deepEqual(readOnly, { transaction_read_only: 'on' });
    const error = await sql.batch([sql`insert into ${sql.id(table)} values (${20}, ${'x'})`], { readOnly: true }).catch((e) => e);
    assert.equal(error.code, '25006'); // read_only_sql_transaction
  });
});
