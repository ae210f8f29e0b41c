// Aborting a query: the promise rejects at once and the gateway cancels the statement in
// Postgres; and the client's own deadline.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SluiceError } from '@sluice/client';
import { client, fakeFetch, recordingFetch } from './harness.js';

const sql = client();

/** Statements whose text contains `marker` that Postgres is running right now. */
async function running(marker: string): Promise<number> {
  const [{ n }] = await sql<{ n: number }>`
    select count(*)::int as n from pg_stat_activity
    where state = 'active' and query like ${'%' + marker + '%'} and pid <> pg_backend_pid()`;
  return n;
}

describe('abort', () => {
  test('aborting a long query rejects at once and cancels the statement on the server', async () => {
    const marker = `abort_query_${Date.now()}`;
    const controller = new AbortController();
    const started = Date.now();
    const query = sql.query(`select pg_sleep(20) /* ${marker} */`, [], { signal: controller.signal });
    const settled = query.then(
      () => assert.fail('pg_sleep(20) finished'),
      (e: SluiceError) => e,
    );
    // Wait until Postgres runs it, so the abort has a statement to cancel.
    while ((await running(marker)) === 0) {
      assert.ok(Date.now() - started < 10_000, 'the statement never started');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    controller.abort(new Error('user went away'));
    const error = await settled;
    assert.ok(error instanceof SluiceError);
    assert.equal(error.kind, 'aborted');
    assert.equal((error.cause as Error).message, 'user went away');
    const deadline = Date.now() + 10_000;
    while ((await running(marker)) > 0) {
      assert.ok(Date.now() < deadline, 'the statement was still running 10 s after the abort');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  });

  test('an already aborted signal sends nothing', async () => {
    const { fetch, sent } = recordingFetch();
    const error = await client({ fetch })
      .query('select 1', [], { signal: AbortSignal.abort() })
      .catch((e) => e);
    assert.equal(error.kind, 'aborted');
    assert.equal(sent.length, 0);
  });

  test('a batch can be aborted too', async () => {
    const error = await sql.batch([sql`select pg_sleep(20)`], { signal: AbortSignal.timeout(200) }).catch((e) => e);
    assert.equal(error.kind, 'aborted');
  });

  test('the client gives up timeoutMs + 1 s after sending when no answer comes', async () => {
    // A gateway that never answers: only the client's deadline ends the wait.
    const { fetch } = fakeFetch(
      (_url, _body, signal) => new Promise((_, reject) => signal?.addEventListener('abort', () => reject(signal.reason))),
    );
    const started = Date.now();
    const error = await client({ fetch, timeoutMs: 100 })`select 1`.catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.equal(error.kind, 'timeout');
    assert.ok(Date.now() - started >= 1000);
  });
});
