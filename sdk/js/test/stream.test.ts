// Streaming over the gateway's NDJSON: rows as they come, in transactions too, backpressure
// (a paused reader leaves Postgres waiting on the client), `break` and AbortSignal cancelling the
// statement in Postgres, a failure part way raised from the last line, flat client memory over
// 1,000,000 rows, and Kysely's `.stream()` through the dialect.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { isSluiceError, SluiceError } from '@sluice/client';
import { SluiceDialect } from '@sluice/client/kysely';
import { Kysely, sql as ksql } from 'kysely';
import { client, tableName } from './harness.js';

const sql = client();
// A full collection before each memory sample, so the figures are what is live, not GC timing.
setFlagsFromString('--expose-gc');
const gc: () => void = runInNewContext('gc');

/** Polls until `check` holds, or fails after a generous deadline. */
async function until(what: string, check: () => Promise<boolean>, deadlineMs = 30_000): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The backends running a statement that contains `marker`, other than the one asking. */
async function running(marker: string): Promise<{ state: string; wait_event: string | null }[]> {
  return sql`select state, wait_event from pg_stat_activity
    where query like ${'%' + marker + '%'} and pid <> pg_backend_pid() and state <> 'idle'`;
}

describe('streaming', () => {
  test('for await over a template streams parsed rows in order', async () => {
    const seen: { n: number; at: Date }[] = [];
    for await (const row of sql<{ n: number; at: Date }>`select g as n, timestamp '2024-01-01' + g * interval '1 day' as at from generate_series(1, 2500) g`.stream()) {
      seen.push(row);
    }
    assert.equal(seen.length, 2500);
    assert.deepEqual(seen[0], { n: 1, at: new Date('2024-01-02T00:00:00Z') });
    assert.equal(seen.at(-1)!.n, 2500);
  });

  test('sql.query(...).stream() with options, and a stream with no rows', async () => {
    const rows: unknown[] = [];
    for await (const row of sql.query<[number, string]>('select $1::int, $2::text', [7, 'x'], { rowMode: 'array' }).stream()) rows.push(row);
    assert.deepEqual(rows, [[7, 'x']]);
    for await (const row of sql`select 1 where false`.stream()) assert.fail(`unexpected row ${row}`);
  });

  test('inside a transaction, and the next call waits for the stream', async () => {
    const table = tableName('stream_tx');
    await sql`create table ${sql.id(table)} (n int)`;
    const count = await sql.transaction(async (tx) => {
      await tx`insert into ${tx.id(table)} select generate_series(1, 300)`;
      let n = 0;
      for await (const row of tx<{ n: number }>`select n from ${tx.id(table)} order by n`.stream()) n += row.n > 0 ? 1 : 0;
      const [{ c }] = await tx<{ c: number }>`select count(*)::int as c from ${tx.id(table)}`;
      assert.equal(c, 300);
      return n;
    });
    assert.equal(count, 300);
    await sql`drop table ${sql.id(table)}`;
  });

  test('a paused reader holds the query back; break after 10 rows cancels the statement', async () => {
    const marker = 'stream_break_' + Math.random().toString(36).slice(2);
    // The marker is in the statement's text (a comment), where pg_stat_activity shows it.
    const rows = sql`select generate_series(1, 100000000) as g ${sql.unsafe(`/* ${marker} */`)}`.stream();
    let n = 0;
    for await (const row of rows) {
      void row;
      if (++n === 10) {
        // Not reading: Postgres ends up waiting for the gateway to take more rows (ClientWrite),
        // instead of the gateway buffering 100 million of them.
        await until('the backend to wait on the client', async () => (await running(marker)).some((b) => b.wait_event === 'ClientWrite'));
        break;
      }
    }
    assert.equal(n, 10);
    await until('the statement to be cancelled', async () => (await running(marker)).length === 0);
  });

  test('an AbortSignal cancels a stream part way', async () => {
    const marker = 'stream_abort_' + Math.random().toString(36).slice(2);
    const controller = new AbortController();
    let n = 0;
    const error = await (async () => {
      for await (const row of sql.query(sql`select generate_series(1, 100000000) as g ${sql.unsafe(`/* ${marker} */`)}`, { signal: controller.signal }).stream()) {
        void row;
        if (++n === 5) {
          await until('the statement to show in pg_stat_activity', async () => (await running(marker)).length === 1);
          controller.abort();
        }
      }
    })().catch((e) => e);
    assert.ok(error instanceof SluiceError, String(error));
    assert.equal(error.kind, 'aborted');
    await until('the statement to be cancelled', async () => (await running(marker)).length === 0);
  });

  test('a failure after rows were sent is raised from the last line', async () => {
    let n = 0;
    const error = await (async () => {
      for await (const row of sql`select 1 / (5000 - g) as x from generate_series(1, 10000) g`.stream()) {
        void row;
        n++;
      }
    })().catch((e) => e);
    assert.equal(n, 4999);
    assert.ok(isSluiceError(error));
    assert.equal(error.kind, 'database');
    assert.equal(error.code, '22012'); // division_by_zero
    // An error found before the first row is an ordinary error response.
    const early = await (async () => {
      for await (const row of sql`select * from no_such_table_for_streams`.stream()) void row;
    })().catch((e) => e);
    assert.equal(early.code, '42P01');
  });

  test('1,000,000 rows keep the client memory flat', async (t) => {
    const samples: number[] = [];
    let n = 0;
    let first = 0;
    for await (const row of sql<{ g: number; pad: string }>`select g, repeat('x', 100) as pad from generate_series(1, 1000000) g`.stream()) {
      n++;
      if (row.g !== n) assert.fail(`row ${n} out of order`);
      if (n % 100_000 === 0) {
        gc();
        const { heapUsed } = process.memoryUsage();
        if (!first) first = heapUsed;
        samples.push(heapUsed);
      }
    }
    assert.equal(n, 1_000_000);
    const peak = Math.max(...samples);
    const mb = (b: number) => (b / 1024 / 1024).toFixed(1);
    t.diagnostic(
      `live heap after gc at 100k rows ${mb(first)} MB, max over 10 samples ${mb(peak)} MB, rss at the end ${mb(process.memoryUsage().rss)} MB (the rows as JSON: ~${mb(n * 130)} MB)`,
    );
    // Flat: the live heap does not grow with the rows read (the result is ~124 MB of JSON).
    assert.ok(peak - first < 8 * 1024 * 1024, `heap grew ${mb(peak - first)} MB while streaming`);
  });

  test('Kysely .stream() through the dialect, in and out of a transaction', async () => {
    const db = new Kysely<any>({ dialect: new SluiceDialect({ client: sql }) });
    const chunks: number[] = [];
    for await (const row of db.selectFrom(ksql`generate_series(1, 250)`.as('g')).selectAll().stream(100)) {
      chunks.push(Number(Object.values(row)[0]));
    }
    assert.equal(chunks.length, 250);
    const inTx = await db.transaction().execute(async (trx) => {
      let n = 0;
      for await (const row of trx.selectFrom(ksql`generate_series(1, 30)`.as('g')).selectAll().stream(7)) n += row ? 1 : 0;
      return n;
    });
    assert.equal(inTx, 30);
  });
});
