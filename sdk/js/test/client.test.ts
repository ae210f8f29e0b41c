// The client against the real gateway: construction, the tagged template (lazy, composable,
// injection-proof), identifiers, `unsafe`, `sql.query` and its options, and errors.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createClient, SluiceError } from '@sluice/client';
import { client, fakeFetch, gateway, recordingFetch, tableName } from './harness.js';

const sql = client();

describe('createClient', () => {
  test('a missing url or apiKey fails at once, naming what is missing', () => {
    assert.throws(() => createClient({ url: '', apiKey: 'k' }), { name: 'TypeError', message: /`url` is missing/ });
    assert.throws(() => createClient({ url: gateway.url, apiKey: undefined as unknown as string }), { name: 'TypeError', message: /`apiKey` is missing/ });
    assert.throws(() => createClient(undefined as any), /`url` is missing/);
    assert.throws(() => createClient({ url: 'not a url', apiKey: 'k' }), /not a URL/);
  });

  test('a trailing slash in the url is fine', async () => {
    const slashed = createClient({ url: gateway.url + '/', apiKey: gateway.apiKey });
    assert.deepEqual(await slashed`select 1 as one`, [{ one: 1 }]);
  });

  test('extra headers are sent, and the gateway echoes x-request-id', async () => {
    const { fetch, sent } = recordingFetch();
    const withHeaders = client({ fetch, headers: { 'x-request-id': 'sdk-test-42' } });
    const error = await withHeaders`select 1/0`.then(
      () => assert.fail('division by zero succeeded'),
      (e: SluiceError) => e,
    );
    assert.equal(sent[0].headers['x-request-id'], 'sdk-test-42');
    assert.equal(sent[0].headers.authorization, `Bearer ${gateway.apiKey}`);
    assert.equal(error.requestId, 'sdk-test-42');
  });
});

describe('tagged template', () => {
  test('values become $n parameters and rows come back typed', async () => {
    const rows = await sql<{ id: number; name: string; born: Date; tags: string[] }>`
      select id, name, born, tags from demo where id = ${1}`;
    assert.deepEqual(rows, [{ id: 1, name: 'ada', born: new Date('1815-12-10T00:00:00Z'), tags: ['math', 'engines'] }]);
  });

  test('is lazy: nothing is sent until it is awaited, and awaiting twice runs it once', async () => {
    const { fetch, sent } = recordingFetch();
    const lazy = client({ fetch });
    const query = lazy`select ${7}::int as n`;
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(sent.length, 0);
    assert.deepEqual(await query, [{ n: 7 }]);
    assert.deepEqual(await query, [{ n: 7 }]);
    assert.equal(sent.length, 1);
    assert.deepEqual(sent[0].body, { sql: 'select $1::int as n', params: [7], rowMode: 'array' });
  });

  test('fragments nest and their placeholders are renumbered', async () => {
    const { fetch, sent } = recordingFetch();
    const composing = client({ fetch });
    const inner = composing`${3}::int as c`;
    const middle = composing`${2}::int as b, ${inner}`;
    const rows = await composing`select ${1}::int as a, ${middle}, ${4}::int as d`;
    assert.deepEqual(rows, [{ a: 1, b: 2, c: 3, d: 4 }]);
    assert.equal(sent[0].body.sql, 'select $1::int as a, $2::int as b, $3::int as c, $4::int as d');
    assert.deepEqual(sent[0].body.params, [1, 2, 3, 4]);
  });

  test('conditional fragments: an empty template adds nothing', async () => {
    const byName = (name?: string) => sql`select id from demo where true ${name ? sql`and name = ${name}` : sql``} order by id`;
    assert.deepEqual(await byName('grace'), [{ id: 2 }]);
    assert.deepEqual(await byName(), [{ id: 1 }, { id: 2 }, { id: 3 }]);
  });

  test('calling sql as a plain function is an error', () => {
    const call = sql as unknown as (text: string) => unknown;
    assert.throws(() => call('select 1'), { name: 'TypeError', message: /tagged template/ });
    assert.throws(() => (sql as any)(['select 1']), TypeError);
  });

  test('injection through values: a value is data, never SQL', async () => {
    const evil = "x'; drop table demo; --";
    assert.deepEqual(await sql`select ${evil}::text as v`, [{ v: evil }]);
    assert.deepEqual(await sql`select id from demo where name = ${"ada' or '1'='1"}`, []);
    const error = await sql`select * from demo where id = ${'1 or 1=1'}`.catch((e) => e);
    assert.equal(error.code, '22P02'); // invalid input syntax for type integer
    const dollar = '$1; drop table demo';
    assert.deepEqual(await sql`select ${dollar}::text as v, ${'$2'}::text as w`, [{ v: dollar, w: '$2' }]);
    assert.equal((await sql`select count(*)::int as n from demo`)[0].n >= 3, true);
  });

  test('a text query cannot be nested in a template', async () => {
    const text = sql.query('select $1::int', [1]);
    await assert.rejects(async () => await sql`select * from (${text}) t`, { name: 'TypeError', message: /cannot be nested/ });
  });
});

describe('identifiers and unsafe', () => {
  const table = tableName('ident');
  const odd = `odd "name"; drop table demo; --`;

  before(async () => {
    await sql`create table ${sql.id(table)} (${sql.id(odd)} int, plain text)`;
  });
  after(async () => {
    await sql`drop table if exists ${sql.id(table)}`;
  });

  test('sql.id quotes a name, doubling quotes inside it', async () => {
    await sql`insert into ${sql.id(table)} (${sql.id(odd)}, plain) values (${1}, ${'a'})`;
    assert.deepEqual(await sql`select ${sql.id(odd)} as v from ${sql.id(['public', table])}`, [{ v: 1 }]);
    assert.deepEqual(await sql`select * from ${sql.id(table)}`, [{ [odd]: 1, plain: 'a' }]);
  });

  test('injection through identifiers: the name stays one identifier', async () => {
    const error = await sql`select * from ${sql.id('demo"; drop table demo; --')}`.catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.equal(error.code, '42P01'); // undefined_table
    const schemaTrick = await sql`select * from ${sql.id('public.demo')}`.catch((e) => e);
    assert.equal(schemaTrick.code, '42P01'); // one identifier named "public.demo", not public.demo
    assert.equal((await sql`select count(*)::int as n from demo`)[0].n >= 3, true);
  });

  test('sql.id refuses empty names and NUL characters', () => {
    assert.throws(() => sql.id(''), TypeError);
    assert.throws(() => sql.id([]), TypeError);
    assert.throws(() => sql.id(['public', '']), TypeError);
    assert.throws(() => sql.id('a\0b'), TypeError);
    assert.throws(() => sql.id(42 as unknown as string), TypeError);
  });

  test('sql.unsafe runs trusted text, alone or inside a template', async () => {
    assert.deepEqual(await sql.unsafe('select 1 as one'), [{ one: 1 }]);
    const direction = sql.unsafe('desc');
    assert.deepEqual(await sql`select id from demo order by id ${direction} limit ${1}`, [{ id: 3 }]);
  });
});

describe('sql.query', () => {
  const table = tableName('query');
  before(async () => {
    await sql.query(`create table ${table} (id int primary key, note text)`);
  });
  after(async () => {
    await sql.query(`drop table if exists ${table}`);
  });

  test('runs text with $n placeholders', async () => {
    assert.deepEqual(await sql.query('select $1::int + $2::int as sum', [40, 2]), [{ sum: 42 }]);
    assert.deepEqual(await sql.query<{ name: string }>('select name from demo where id = $1', [2]), [{ name: 'grace' }]);
  });

  test('rowMode array keeps column order and duplicate names', async () => {
    assert.deepEqual(await sql.query('select 1 as a, 2 as a', [], { rowMode: 'array' }), [[1, 2]]);
    assert.deepEqual(await sql.query('select 1 as a, 2 as a'), [{ a: 2 }]);
  });

  test('fullResults gives fields, command and rowCount', async () => {
    const inserted = await sql.query(`insert into ${table} values ($1, $2), ($3, $4) returning id`, [1, 'a', 2, 'b'], { fullResults: true });
    assert.equal(inserted.command, 'INSERT');
    assert.equal(inserted.rowCount, 2);
    assert.deepEqual(inserted.fields, [{ name: 'id', oid: 23, type: 'int4' }]);
    assert.deepEqual(inserted.rows, [{ id: 1 }, { id: 2 }]);
    const created = await sql.query(`create table ${table}_x (a int)`, [], { fullResults: true });
    assert.equal(created.command, 'CREATE');
    assert.equal(created.rowCount, null);
    await sql.query(`drop table ${table}_x`);
  });

  test('takes a template query with options', async () => {
    const updated = await sql.query(sql`update ${sql.id(table)} set note = ${'c'} where id = ${1}`, { fullResults: true });
    assert.equal(updated.command, 'UPDATE');
    assert.equal(updated.rowCount, 1);
    assert.deepEqual(await sql.query(sql`select id, note from ${sql.id(table)} where id = ${1}`, { rowMode: 'array' }), [[1, 'c']]);
  });

  test('timeoutMs is the statement timeout', async () => {
    const error = await sql.query('select pg_sleep(5)', [], { timeoutMs: 200 }).catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.equal(error.kind, 'database');
    assert.equal(error.code, '57014'); // query_canceled
  });

  test('an undefined parameter is refused before anything is sent', async () => {
    const { fetch, sent } = recordingFetch();
    const strict = client({ fetch });
    await assert.rejects(async () => await strict`select ${undefined}::int`, { name: 'TypeError', message: /\$1 is undefined/ });
    await assert.rejects(async () => await strict.query('select $1, $2', [1, undefined]), /\$2 is undefined/);
    assert.equal(sent.length, 0);
  });
});

describe('errors', () => {
  test('database errors carry every Postgres field, the request id and the query', async () => {
    const error = await sql`insert into demo (id, name) values (${1}, ${'again'})`.catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.ok(error instanceof Error);
    assert.equal(error.name, 'SluiceError');
    assert.equal(error.kind, 'database');
    assert.equal(error.status, 400);
    assert.equal(error.code, '23505');
    assert.equal(error.constraint, 'demo_pkey');
    assert.equal(error.table, 'demo');
    assert.equal(error.schema, 'public');
    assert.equal(error.severity, 'ERROR');
    assert.match(error.detail!, /Key \(id\)=\(1\) already exists/);
    assert.match(error.message, /duplicate key/);
    assert.match(error.requestId!, /^\S+$/);
    assert.equal(error.query, 'insert into demo (id, name) values ($1, $2)');
    assert.equal(error.attempts, 1);
    assert.equal(error.retryAfter, undefined);
  });

  test('syntax errors have a position', async () => {
    const error = await sql`selec 1`.catch((e) => e);
    assert.equal(error.code, '42601');
    assert.equal(error.position, 1);
  });

  test('the gateway refusing a request: unauthorized, bad_request', async () => {
    const stranger = createClient({ url: gateway.url, apiKey: 'sluice_sk_not-a-key' });
    const unauthorized = await stranger`select 1`.catch((e) => e);
    assert.equal(unauthorized.kind, 'unauthorized');
    assert.equal(unauthorized.status, 401);
    const twoStatements = await sql.unsafe('select 1; select 2').catch((e) => e);
    assert.equal(twoStatements.kind, 'bad_request');
    assert.equal(twoStatements.status, 400);
  });

  test('an answer that is not the gateway JSON is a bad_response', async () => {
    const { fetch } = fakeFetch(() => new Response('<html>502 Bad Gateway</html>', { status: 502 }));
    const error = await client({ fetch })`select 1`.catch((e) => e);
    assert.equal(error.kind, 'bad_response');
    assert.equal(error.status, 502);
    assert.match(error.message, /502 Bad Gateway/);
  });

  test('no gateway at the address is a network error', async () => {
    const nowhere = createClient({ url: 'http://127.0.0.1:9', apiKey: 'k' });
    const error = await nowhere`select 1`.catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.equal(error.kind, 'network');
    assert.equal(error.status, undefined);
    assert.equal(error.attempts, 1);
    assert.ok(error.cause);
  });
});
