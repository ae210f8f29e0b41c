// The `@neondatabase/serverless` driver's own README and CONFIG.md examples, unchanged but for
// the endpoint (see env.mjs): tagged templates, query() with fullResults and arrayMode,
// transaction() with its options, errors with Postgres's fields, and Pool.query over fetch.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { NeonDbError, Pool, neon, neonConfig } from '@neondatabase/serverless';

import { connectionString, database, endpoint, key, tenant } from './env.mjs';

const sql = neon(connectionString);

before(async () => {
  await sql`DROP TABLE IF EXISTS neon_posts`;
  await sql`CREATE TABLE neon_posts (id serial PRIMARY KEY, title text NOT NULL UNIQUE, posted_at timestamptz NOT NULL DEFAULT now(), views int8 NOT NULL DEFAULT 0, tags text[] NOT NULL DEFAULT '{}', meta jsonb, score numeric(6,2))`;
  await sql`INSERT INTO neon_posts (title, views, tags, meta, score) VALUES ('first', 9007199254740993, '{a,b}', '{"k": [1, 2]}', 1.50), ('second', 2, '{}', NULL, NULL)`;
});

after(async () => {
  await sql`DROP TABLE IF EXISTS neon_posts`;
});

test('tagged template: SELECT * FROM posts WHERE id = ${postId}', async () => {
  const postId = 1;
  const [post] = await sql`SELECT * FROM neon_posts WHERE id = ${postId}`;
  assert.equal(post.id, 1);
  assert.equal(post.title, 'first');
  assert.ok(post.posted_at instanceof Date, 'timestamptz parsed into a Date by the driver');
  assert.equal(post.views, '9007199254740993', 'int8 stays a string, as with Neon');
  assert.deepEqual(post.tags, ['a', 'b']);
  assert.deepEqual(post.meta, { k: [1, 2] });
  assert.equal(post.score, '1.50');
  const missing = await sql`SELECT * FROM neon_posts WHERE id = ${12345}`;
  assert.deepEqual(missing, []);
});

test('interpolated values are parameters, never SQL', async () => {
  const evil = "x'; DROP TABLE neon_posts; --";
  const rows = await sql`SELECT ${evil}::text AS v, ${null}::int AS n, ${true}::bool AS b, ${[1, 2, 3]}::int[] AS a`;
  assert.deepEqual(rows, [{ v: evil, n: null, b: true, a: [1, 2, 3] }]);
  const [{ count }] = await sql`SELECT count(*)::int AS count FROM neon_posts`;
  assert.equal(count, 2);
});

test('query() with fullResults and arrayMode', async () => {
  const full = await sql.query('SELECT id, title FROM neon_posts WHERE id = $1', [1], { fullResults: true });
  assert.equal(full.command, 'SELECT');
  assert.equal(full.rowCount, 1);
  assert.equal(full.rowAsArray, false);
  assert.deepEqual(full.rows, [{ id: 1, title: 'first' }]);
  assert.deepEqual(full.fields.map((f) => [f.name, f.dataTypeID, f.format]), [['id', 23, 'text'], ['title', 25, 'text']]);
  assert.ok(full.fields[0].tableID > 0, 'tableID names the table');
  assert.equal(full.fields[0].columnID, 1);
  assert.equal(full.fields[0].dataTypeSize, 4);
  assert.equal(full.fields[0].dataTypeModifier, -1);

  const arrays = await sql.query('SELECT id, title FROM neon_posts ORDER BY id', [], { arrayMode: true });
  assert.deepEqual(arrays, [[1, 'first'], [2, 'second']]);

  const both = await sql.query('SELECT 1 AS one, 2 AS two', [], { arrayMode: true, fullResults: true });
  assert.deepEqual(both.rows, [[1, 2]]);
  assert.equal(both.rowAsArray, true);

  const modes = neon(connectionString, { arrayMode: true, fullResults: true });
  const update = await modes`UPDATE neon_posts SET views = views + 1 WHERE id = ${2}`;
  assert.equal(update.command, 'UPDATE');
  assert.equal(update.rowCount, 1);
  assert.deepEqual(update.rows, []);
});

test('transaction([...]) runs in one transaction and returns every result', async () => {
  const showLatestN = 10;
  const [posts, counts] = await sql.transaction([
    sql`SELECT * FROM neon_posts ORDER BY posted_at DESC, id LIMIT ${showLatestN}`,
    sql`SELECT count(*)::int AS n FROM neon_posts`,
  ]);
  assert.equal(posts.length, 2);
  assert.deepEqual(counts, [{ n: 2 }]);

  const [settings] = await sql.transaction(
    (txn) => [txn`SELECT current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro`],
    { isolationLevel: 'Serializable', readOnly: true, deferrable: true },
  );
  assert.deepEqual(settings, [{ iso: 'serializable', ro: 'on' }]);

  const [defaults] = await sql.transaction([sql`SELECT current_setting('transaction_isolation') AS iso`], {
    isolationLevel: 'RepeatableRead',
  });
  assert.deepEqual(defaults, [{ iso: 'repeatable read' }]);

  // Per-query options inside a transaction, as CONFIG.md shows.
  const [full, arrays] = await sql.transaction([
    sql.query('SELECT 1 AS a', [], { fullResults: true }),
    sql.query('SELECT 2 AS b', [], { arrayMode: true }),
  ]);
  assert.deepEqual(full.rows, [{ a: 1 }]);
  assert.deepEqual(arrays, [[2]]);
});

test('a failing statement rolls the whole transaction back', async () => {
  await assert.rejects(
    sql.transaction([
      sql`INSERT INTO neon_posts (title) VALUES ('third')`,
      sql`INSERT INTO neon_posts (title) VALUES ('first')`,
    ]),
    (error) => error instanceof NeonDbError && error.code === '23505' && error.constraint === 'neon_posts_title_key',
  );
  const rows = await sql`SELECT 1 FROM neon_posts WHERE title = 'third'`;
  assert.deepEqual(rows, []);
  await assert.rejects(
    sql.transaction([sql`INSERT INTO neon_posts (title) VALUES ('fourth')`], { readOnly: true }),
    (error) => error instanceof NeonDbError && error.code === '25006',
  );
});

test('Postgres errors are NeonDbError with code, position, detail and the rest', async () => {
  await assert.rejects(sql`SELECT * FROM no_such_table`, (error) => {
    assert.ok(error instanceof NeonDbError);
    assert.equal(error.name, 'NeonDbError');
    assert.equal(error.code, '42P01');
    assert.equal(error.message, 'relation "no_such_table" does not exist');
    assert.equal(error.position, '15');
    assert.equal(error.severity, 'ERROR');
    assert.equal(typeof error.routine, 'string');
    return true;
  });
  await assert.rejects(sql`INSERT INTO neon_posts (title) VALUES (${'first'})`, (error) => {
    assert.equal(error.code, '23505');
    assert.equal(error.detail, 'Key (title)=(first) already exists.');
    assert.equal(error.table, 'neon_posts');
    assert.equal(error.schema, 'public');
    return true;
  });
  await assert.rejects(sql`SELECT 1/0`, (error) => error.code === '22012');
});

test('gateway refusals reach the caller as NeonDbError with the status and a message', async () => {
  const wrongKey = neon(`postgresql://${tenant}:not-the-key@sluice.test/${database}`);
  await assert.rejects(wrongKey`SELECT 1`, (error) => {
    assert.ok(error instanceof NeonDbError);
    assert.match(error.message, /HTTP status 401/);
    assert.match(error.message, /unknown API key/);
    return true;
  });
  const wrongDatabase = neon(`postgresql://${tenant}:${key}@sluice.test/not_${database}`);
  await assert.rejects(wrongDatabase`SELECT 1`, /HTTP status 403.*names database/);
});

test('an authToken is sent as Authorization: Bearer and authenticates too', async () => {
  const viaToken = neon(`postgresql://${tenant}@sluice.test/${database}`, { authToken: key });
  assert.deepEqual(await viaToken`SELECT 7 AS n`, [{ n: 7 }]);
});

test('Pool.query goes over fetch with poolQueryViaFetch', async () => {
  neonConfig.poolQueryViaFetch = true;
  try {
    const pool = new Pool({ connectionString });
    const result = await pool.query('SELECT title FROM neon_posts WHERE id = $1', [1]);
    assert.deepEqual(result.rows, [{ title: 'first' }]);
    assert.equal(result.rowCount, 1);
    await pool.end();
  } finally {
    neonConfig.poolQueryViaFetch = false;
  }
});

test('the endpoint is the only change: a raw fetch sees Neon\'s response shape', async () => {
  const response = await fetch(endpoint, {
    method: 'POST',
    headers: { 'Neon-Connection-String': connectionString, 'Neon-Raw-Text-Output': 'true', 'Neon-Array-Mode': 'true' },
    body: JSON.stringify({ query: 'SELECT $1::int AS n', params: ['5'] }),
  });
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.deepEqual(body.rows, [['5']]);
  assert.equal(body.rowAsArray, true);
  assert.deepEqual(Object.keys(body.fields[0]), ['name', 'dataTypeID', 'tableID', 'columnID', 'dataTypeSize', 'dataTypeModifier', 'format']);
});
