// Every type round trip through the real gateway: results parsed per column OID, parameters
// encoded from JavaScript values, and custom parsers per client and per query.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { client } from './harness.js';

const sql = client();

async function one(query: PromiseLike<Record<string, unknown>[]>): Promise<Record<string, unknown>> {
  const rows = await query;
  assert.equal(rows.length, 1);
  return rows[0];
}

describe('results', () => {
  test('integers, booleans, text, uuid, json', async () => {
    const row = await one(sql`
      select 1::int2 as small, 2147483647::int4 as int, 9007199254740993::int8 as big, true as yes, false as no,
             'héllo ✓'::text as text, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as uuid,
             '{"a": [1, "two", null], "b": {"c": true}}'::jsonb as doc, '[1,2]'::json as list, 23::oid as oid`);
    assert.deepEqual(row, {
      small: 1,
      int: 2147483647,
      big: '9007199254740993',
      yes: true,
      no: false,
      text: 'héllo ✓',
      uuid: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
      doc: { a: [1, 'two', null], b: { c: true } },
      list: [1, 2],
      oid: 23,
    });
  });

  test('int8 as bigint when the client asks', async () => {
    const bigints = client({ int8: 'bigint' });
    const row = await one(bigints`select 9223372036854775807::int8 as max, array[1, -2]::int8[] as list, null::int8 as none`);
    assert.deepEqual(row, { max: 9223372036854775807n, list: [1n, -2n], none: null });
  });

  test('numeric stays an exact string; floats are numbers, NaN and infinities included', async () => {
    const row = await one(sql`
      select 12345678901234567890.123456789::numeric as exact, 'NaN'::numeric as nan_numeric,
             1.5::float4 as f4, 0.1::float8 as f8, 'NaN'::float8 as nan, 'Infinity'::float8 as inf,
             '-Infinity'::float4 as ninf, array[1.5, 'NaN', '-Infinity']::float8[] as floats`);
    assert.deepEqual(row, {
      exact: '12345678901234567890.123456789',
      nan_numeric: 'NaN',
      f4: 1.5,
      f8: 0.1,
      nan: NaN,
      inf: Infinity,
      ninf: -Infinity,
      floats: [1.5, NaN, -Infinity],
    });
  });

  test('date, timestamp and timestamptz become Dates', async () => {
    const row = await one(sql`
      select '2024-01-31'::date as d, '2024-01-31 12:34:56.789'::timestamp as ts,
             '2024-01-31 12:00:00+05:30'::timestamptz as tstz, '2024-01-31 12:00:00.123456+00'::timestamptz as micro,
             '0099-06-01'::date as old, '0044-03-15 BC'::date as bc, '20000-01-01'::date as far,
             'infinity'::timestamptz as inf, '-infinity'::date as ninf`);
    assert.deepEqual(row.d, new Date('2024-01-31T00:00:00Z'));
    assert.deepEqual(row.ts, new Date('2024-01-31T12:34:56.789Z'));
    assert.deepEqual(row.tstz, new Date('2024-01-31T06:30:00Z'));
    assert.deepEqual(row.micro, new Date('2024-01-31T12:00:00.123Z'));
    assert.equal((row.old as Date).getUTCFullYear(), 99);
    assert.equal((row.bc as Date).getUTCFullYear(), -43); // 44 BC is year -43: there is no year 0 in BC/AD
    assert.equal((row.bc as Date).getUTCMonth(), 2);
    assert.equal((row.far as Date).getUTCFullYear(), 20000);
    assert.equal(row.inf, 'infinity');
    assert.equal(row.ninf, '-infinity');
  });

  test('a tenant time zone other than UTC still gives the right instant', async () => {
    const row = await one(sql`select '2024-06-01 00:00:00-07'::timestamptz as t, '2024-06-01 10:00:00+05:53:28'::timestamptz as lmt`);
    assert.deepEqual(row.t, new Date('2024-06-01T07:00:00Z'));
    assert.deepEqual(row.lmt, new Date(Date.UTC(2024, 5, 1, 10) - (5 * 3600 + 53 * 60 + 28) * 1000));
  });

  test('dates as strings when asked, per client or per query', async () => {
    const strings = client({ dates: 'string' });
    const query = (s: typeof sql) => s`select '2024-01-31'::date as d, '2024-01-31 12:00:00+00'::timestamptz as t, array['2024-01-31'::date] as ds`;
    assert.deepEqual(await one(query(strings)), { d: '2024-01-31', t: '2024-01-31 12:00:00+00', ds: ['2024-01-31'] });
    assert.deepEqual(await one(sql.query(query(sql), { dates: 'string' })), { d: '2024-01-31', t: '2024-01-31 12:00:00+00', ds: ['2024-01-31'] });
  });

  test('bytea becomes a Uint8Array', async () => {
    const row = await one(sql`select '\\x00ff10'::bytea as bytes, ''::bytea as empty, array['\\x01'::bytea, null] as list`);
    assert.deepEqual(row.bytes, new Uint8Array([0, 255, 16]));
    assert.deepEqual(row.empty, new Uint8Array([]));
    assert.deepEqual(row.list, [new Uint8Array([1]), null]);
  });

  test('arrays, nested arrays and their NULLs, element by element', async () => {
    const row = await one(sql`
      select array[[1, 2], [3, null]]::int[] as grid,
             array['a"b', 'c,d', 'back\\slash', 'NULL', null, ''] as texts,
             array['2024-01-31 12:00:00+00'::timestamptz, null] as stamps,
             array[['2024-01-01'::timestamp], ['2024-01-02'::timestamp]] as stamp_grid,
             array[]::int8[] as empty, array[1.5]::numeric[] as numerics`);
    assert.deepEqual(row.grid, [[1, 2], [3, null]]);
    assert.deepEqual(row.texts, ['a"b', 'c,d', 'back\\slash', 'NULL', null, '']);
    assert.deepEqual(row.stamps, [new Date('2024-01-31T12:00:00Z'), null]);
    assert.deepEqual(row.stamp_grid, [[new Date('2024-01-01T00:00:00Z')], [new Date('2024-01-02T00:00:00Z')]]);
    assert.deepEqual(row.empty, []);
    assert.deepEqual(row.numerics, ['1.5']);
  });

  test('everything else is Postgres text output', async () => {
    const row = await one(sql`
      select '1 day 02:00:00'::interval as span, '12:34:56'::time as clock, '192.168.0.1/24'::inet as net,
             '(1,2)'::point as point, 12.5::money as money, 'a'::char(3) as padded`);
    assert.deepEqual(row, { span: '1 day 02:00:00', clock: '12:34:56', net: '192.168.0.1/24', point: '(1,2)', money: '$12.50', padded: 'a  ' });
  });

  test('a column named __proto__ is a plain key', async () => {
    const row = await one(sql`select 1 as "__proto__", 2 as "constructor"`);
    assert.deepEqual(Object.keys(row), ['__proto__', 'constructor']);
    assert.equal(Object.getPrototypeOf(row), Object.prototype);
    assert.equal(Object.getOwnPropertyDescriptor(row, '__proto__')?.value, 1);
  });
});

describe('parameters', () => {
  test('Date goes as ISO 8601 and comes back the same instant', async () => {
    const when = new Date('2024-02-29T23:59:59.999Z');
    const row = await one(sql`select ${when}::timestamptz as t, ${when}::timestamptz = '2024-02-29 23:59:59.999+00' as same`);
    assert.deepEqual(row, { t: when, same: true });
  });

  test('Uint8Array goes as bytea hex', async () => {
    const bytes = new Uint8Array([0, 1, 15, 16, 127, 128, 255]);
    const row = await one(sql`select ${bytes}::bytea as b, ${bytes}::bytea = '\\x00010f107f80ff'::bytea as same, length(${bytes}::bytea) as n`);
    assert.deepEqual(row, { b: bytes, same: true, n: 7 });
    const buffer = Buffer.from('hi');
    assert.deepEqual((await one(sql`select ${buffer}::bytea as b`)).b, new Uint8Array([104, 105]));
  });

  test('bigint goes as its digits', async () => {
    const row = await one(sql`select ${9223372036854775807n}::int8 as max, ${-1n}::int8 + 1 as zero`);
    assert.deepEqual(row, { max: '9223372036854775807', zero: '0' });
  });

  test('numbers, NaN and infinities, booleans, null, strings', async () => {
    const row = await one(sql`
      select ${0.1}::float8 as f, ${NaN}::float8 as nan, ${-Infinity}::float8 as ninf, ${42}::int as i,
             ${true}::bool as yes, ${null}::text as none, ${''}::text as empty, ${'日本'}::text as text`);
    assert.deepEqual(row, { f: 0.1, nan: NaN, ninf: -Infinity, i: 42, yes: true, none: null, empty: '', text: '日本' });
  });

  test('objects go as JSON', async () => {
    const doc = { name: 'ada', tags: ['math'], nested: { n: 1, none: null } };
    const row = await one(sql`select ${doc}::jsonb as doc, ${doc}::jsonb ->> 'name' as name, ${[doc]}::jsonb as list`);
    assert.deepEqual(row, { doc, name: 'ada', list: [doc] });
  });

  test('arrays go as Postgres arrays, elements escaped', async () => {
    const texts = ['a"b', 'c,d', 'back\\slash', 'NULL', null, '', '{x}', ' spaced '];
    const row = await one(sql`select ${texts}::text[] as texts, ${[[1, 2], [3, 4]]}::int[] as grid, 2 = any(${[1, 2, 3]}::int[]) as found`);
    assert.deepEqual(row, { texts, grid: [[1, 2], [3, 4]], found: true });
  });

  test('array elements are encoded like single values', async () => {
    const dates = [new Date('2024-01-01T00:00:00Z'), new Date('2024-06-30T12:00:00Z')];
    const row = await one(sql`
      select ${dates}::timestamptz[] as dates, ${[new Uint8Array([1, 2]), null]}::bytea[] as blobs,
             ${[1n, 2n]}::int8[] as bigs`);
    assert.deepEqual(row, { dates, blobs: [new Uint8Array([1, 2]), null], bigs: ['1', '2'] });
  });

  test('ids from an array, the usual way: = any($1)', async () => {
    const rows = await sql<{ name: string }>`select name from demo where id = any(${[1, 3]}::int[]) order by id`;
    assert.deepEqual(rows, [{ name: 'ada' }, { name: 'edsger' }]);
  });
});

describe('custom parsers', () => {
  test('per client, by OID or by type name, also for array elements', async () => {
    const numbers = client({ types: { 1700: Number, int4: (v: number) => v * 10 } });
    const row = await one(numbers`select 1.5::numeric as n, array[2.5]::numeric[] as ns, 4::int as i, array[1, 2] as is`);
    assert.deepEqual(row, { n: 1.5, ns: [2.5], i: 40, is: [10, 20] });
  });

  test('an array type can have its own parser', async () => {
    const joined = client({ types: { _text: (v: string[]) => v.join('+') } });
    assert.deepEqual(await one(joined`select array['a', 'b'] as t`), { t: 'a+b' });
  });

  test('a custom parser replaces a built-in one', async () => {
    const epochs = client({ types: { timestamptz: (v: string) => Date.parse(v.replace(' ', 'T').replace(/\+00$/, 'Z')) } });
    assert.deepEqual(await one(epochs`select '2024-01-01 00:00:00+00'::timestamptz as t`), { t: Date.UTC(2024, 0, 1) });
  });

  test('per query, merged over the client parsers', async () => {
    const numbers = client({ types: { numeric: Number } });
    const row = await one(numbers.query('select 1.5::numeric as n, 2::int as i', [], { types: { int4: String } }));
    assert.deepEqual(row, { n: 1.5, i: '2' });
    assert.deepEqual(await one(numbers`select 2::int as i`), { i: 2 });
  });

  test('never global: another client is not affected', async () => {
    client({ types: { numeric: Number }, int8: 'bigint', dates: 'string' });
    assert.deepEqual(await one(sql`select 1.5::numeric as n, 1::int8 as b, '2024-01-01'::date as d`), {
      n: '1.5',
      b: '1',
      d: new Date('2024-01-01T00:00:00Z'),
    });
  });

  test('NULL never reaches a parser', async () => {
    const strict = client({ types: { numeric: () => assert.fail('a parser saw NULL') } });
    assert.deepEqual(await one(strict`select null::numeric as n, array[null]::numeric[] as ns`), { n: null, ns: [null] });
  });
});
