// `sql.transaction` → `/v1/transactions/*`: begin, the callback's queries, commit; rollback
// when the callback throws or the signal aborts.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SluiceError, type Transaction } from '@sluice/client';
import { client, recordingFetch, tableName } from './harness.js';

const sql = client();
const table = tableName('tx');
const ids = async () => (await sql<{ id: number }>`select id from ${sql.id(table)} order by id`).map((row) => row.id);

describe('transaction', () => {
  before(async () => {
    await sql`create table ${sql.id(table)} (id int primary key, note text)`;
  });
  after(async () => {
    await sql`drop table if exists ${sql.id(table)}`;
  });

  test('commits what the callback did and returns its value', async () => {
    const { fetch, sent } = recordingFetch();
    const recorded = client({ fetch });
    const result = await recorded.transaction(async (tx) => {
      await tx`insert into ${tx.id(table)} values (${1}, ${'one'})`;
      const [row] = await tx<{ n: number }>`select count(*)::int as n from ${tx.id(table)}`;
      return row.n;
    });
    assert.equal(result, 1);
    assert.deepEqual(await ids(), [1]);
    const paths = sent.map((s) => new URL(s.url).pathname.replace(/tx_[^/]+/, 'ID'));
    assert.deepEqual(paths, ['/v1/transactions', '/v1/transactions/ID/query', '/v1/transactions/ID/query', '/v1/transactions/ID/commit']);
  });

  test('rolls back when the callback throws, and rethrows the same error', async () => {
    const thrown = new Error('changed my mind');
    const error = await sql
      .transaction(async (tx) => {
        await tx`insert into ${tx.id(table)} values (${2}, ${'two'})`;
        throw thrown;
      })
      .catch((e) => e);
    assert.equal(error, thrown);
    assert.deepEqual(await ids(), [1]);
  });

  test('rolls back when a statement fails', async () => {
    const error = await sql
      .transaction(async (tx) => {
        await tx`insert into ${tx.id(table)} values (${3}, ${'three'})`;
        await tx`insert into ${tx.id(table)} values (${1}, ${'duplicate'})`;
      })
      .catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.equal(error.code, '23505');
    assert.deepEqual(await ids(), [1]);
  });

  test('a failed statement whose error the callback swallowed makes commit fail loudly', async () => {
    const error = await sql
      .transaction(async (tx) => {
        await tx`insert into ${tx.id(table)} values (${4}, ${'four'})`;
        await tx`select 1/0`.catch(() => {});
      })
      .catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.equal(error.kind, 'transaction_rolled_back');
    assert.deepEqual(await ids(), [1]);
  });

  test('savepoints work inside the callback', async () => {
    await sql.transaction(async (tx) => {
      await tx`insert into ${tx.id(table)} values (${5}, ${'five'})`;
      await tx`savepoint before_dup`;
      await tx`insert into ${tx.id(table)} values (${1}, ${'dup'})`.catch(() => {});
      await tx`rollback to savepoint before_dup`;
    });
    assert.deepEqual(await ids(), [1, 5]);
  });

  test('isolation, readOnly and the same helpers as the client', async () => {
    const seen = await sql.transaction(
      async (tx) => {
        const [level] = await tx.query<{ transaction_isolation: string }>('show transaction_isolation');
        const [mode] = await tx.unsafe<{ transaction_read_only: string }>('show transaction_read_only');
        const [full] = await tx.batch([tx.query('select $1::int as n', [7], { fullResults: true })]).then(([r]) => r.rows);
        return [level.transaction_isolation, mode.transaction_read_only, full.n];
      },
      { isolation: 'repeatable read', readOnly: true },
    );
    assert.deepEqual(seen, ['repeatable read', 'on', 7]);
  });

  test('queries started together run one after another', async () => {
    await sql.transaction(async (tx) => {
      await Promise.all([6, 7, 8, 9].map((id) => tx`insert into ${tx.id(table)} values (${id}, ${'parallel'})`));
    });
    assert.deepEqual(await ids(), [1, 5, 6, 7, 8, 9]);
  });

  test('a query of an ended transaction is refused', async () => {
    let leaked: Transaction | undefined;
    await sql.transaction(async (tx) => {
      leaked = tx;
    });
    await assert.rejects(async () => await leaked!`select 1`, /transaction has ended/);
  });

  test('aborting rolls back and cancels the running statement', async () => {
    const controller = new AbortController();
    const marker = `abort_tx_${Date.now()}`;
    const started = Date.now();
    const running = sql.transaction(
      async (tx) => {
        await tx`insert into ${tx.id(table)} values (${100}, ${'aborted'})`;
        setTimeout(() => controller.abort(), 300);
        await tx.unsafe(`select pg_sleep(20) /* ${marker} */`);
      },
      { signal: controller.signal },
    );
    const error = await running.catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.equal(error.kind, 'aborted');
    assert.ok(Date.now() - started < 5000, 'the abort took effect at once');
    assert.deepEqual(await ids(), [1, 5, 6, 7, 8, 9]);
    // The gateway cancels the statement when the client goes away.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const [{ n }] = await sql<{ n: number }>`
        select count(*)::int as n from pg_stat_activity where state = 'active' and query like ${'%' + marker + '%'} and pid <> pg_backend_pid()`;
      if (n === 0) break;
      assert.ok(Date.now() < deadline, 'the statement was still running 10 s after the abort');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  });

  test('a signal aborted before the start begins nothing', async () => {
    const { fetch, sent } = recordingFetch();
    const error = await client({ fetch })
      .transaction(async () => assert.fail('the callback ran'), { signal: AbortSignal.abort() })
      .catch((e) => e);
    assert.equal(error.kind, 'aborted');
    assert.equal(sent.length, 0);
  });
});
