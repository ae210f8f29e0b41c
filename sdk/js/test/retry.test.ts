// Retries: only what the gateway did not run (429/503), after Retry-After plus jittered backoff,
// within bounded attempts and time; network errors only for idempotent requests; never inside a
// transaction's callback.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createClient, SluiceError } from '@sluice/client';
import { fakeFetch, freePort, json, recordingFetch, serveGateway, type ServedGateway } from './harness.js';

describe('retry against a rate-limited gateway', () => {
  let limited: ServedGateway;
  before(async () => {
    limited = await serveGateway('rate_per_second = 1\nburst = 1');
  });
  after(async () => {
    await limited?.stop();
  });

  test('a provoked 429 carries kind, status and Retry-After when retries are off', async () => {
    const sql = createClient({ url: limited.url, apiKey: limited.apiKey, retry: false });
    const results = await Promise.allSettled([1, 2, 3].map((n) => sql`select ${n}::int as n`));
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as SluiceError);
    assert.ok(refused.length >= 1, 'three requests at once within a burst of 1 were all admitted');
    for (const error of refused) {
      assert.ok(error instanceof SluiceError);
      assert.equal(error.kind, 'rate_limited');
      assert.equal(error.status, 429);
      assert.ok(error.retryAfter! >= 1, `Retry-After ${error.retryAfter}`);
      assert.equal(error.attempts, 1);
    }
  });

  test('with retries on, the refused requests wait and succeed', async () => {
    await new Promise((resolve) => setTimeout(resolve, 1100)); // let the bucket refill
    const { fetch, sent } = recordingFetch();
    const sql = createClient({ url: limited.url, apiKey: limited.apiKey, fetch, retry: { maxAttempts: 5, maxElapsedMs: 20_000 } });
    const started = Date.now();
    const rows = await Promise.all([1, 2, 3].map((n) => sql`select ${n}::int as n`));
    assert.deepEqual(rows, [[{ n: 1 }], [{ n: 2 }], [{ n: 3 }]]);
    assert.ok(sent.some((s) => s.status === 429), 'no request was rate limited');
    assert.ok(Date.now() - started >= 900, 'the retries did not wait for Retry-After');
  });
});

describe('retry policy', () => {
  const unavailable = () => json(503, { error: { kind: 'pool_timeout', message: 'no connection' } }, { 'retry-after': '0' });

  test('503 is retried up to maxAttempts, and the last error says how many', async () => {
    const { fetch, calls } = fakeFetch(unavailable);
    const sql = createClient({ url: 'http://127.0.0.1:1', apiKey: 'k', fetch, retry: { maxAttempts: 4, baseDelayMs: 1 } });
    const error = await sql`select 1`.catch((e) => e);
    assert.equal(error.kind, 'pool_timeout');
    assert.equal(error.attempts, 4);
    assert.equal(calls.length, 4);
  });

  test('Retry-After is honoured, and no retry starts past maxElapsedMs', async () => {
    const { fetch, calls } = fakeFetch(() => json(429, { error: { kind: 'rate_limited', message: 'slow down' } }, { 'retry-after': '1' }));
    const sql = createClient({ url: 'http://127.0.0.1:1', apiKey: 'k', fetch, retry: { maxAttempts: 10, maxElapsedMs: 1500 } });
    const started = Date.now();
    const error = await sql`select 1`.catch((e) => e);
    assert.equal(error.kind, 'rate_limited');
    assert.equal(error.retryAfter, 1);
    assert.equal(calls.length, 2); // the third would start after 2 s
    assert.ok(Date.now() - started >= 1000);
  });

  test('a retry recovers when the gateway recovers', async () => {
    let n = 0;
    const { fetch } = fakeFetch(() =>
      ++n < 3 ? unavailable() : json(200, { fields: [{ name: 'n', oid: 23, type: 'int4' }], rows: [[1]], command: 'SELECT', rowCount: 1 }),
    );
    const sql = createClient({ url: 'http://127.0.0.1:1', apiKey: 'k', fetch, retry: { baseDelayMs: 1 } });
    assert.deepEqual(await sql`select 1 as n`, [{ n: 1 }]);
    assert.equal(n, 3);
  });

  test('errors where the statement ran, or may have, are not retried', async () => {
    for (const [status, kind] of [
      [400, 'database'],
      [502, 'connection_lost'],
      [500, 'internal'],
      [409, 'transaction_busy'],
    ] as const) {
      const { fetch, calls } = fakeFetch(() => json(status, { error: { kind, message: kind } }));
      const error = await createClient({ url: 'http://127.0.0.1:1', apiKey: 'k', fetch })`select 1`.catch((e) => e);
      assert.equal(error.kind, kind);
      assert.equal(calls.length, 1, `${kind} was retried`);
    }
  });

  test('retry: false turns retries off', async () => {
    const { fetch, calls } = fakeFetch(unavailable);
    const error = await createClient({ url: 'http://127.0.0.1:1', apiKey: 'k', fetch, retry: false })`select 1`.catch((e) => e);
    assert.equal(error.kind, 'pool_timeout');
    assert.equal(calls.length, 1);
  });

  test('a network error is retried only for a request marked idempotent', async () => {
    const port = await freePort(); // nothing listens there
    const { fetch, sent } = recordingFetch();
    const sql = createClient({ url: `http://127.0.0.1:${port}`, apiKey: 'k', fetch, retry: { maxAttempts: 3, baseDelayMs: 1 } });
    const once = await sql.query('insert into t values (1)').catch((e) => e);
    assert.equal(once.kind, 'network');
    assert.equal(sent.length, 1);
    const thrice = await sql.query('select 1', [], { idempotent: true }).catch((e) => e);
    assert.equal(thrice.kind, 'network');
    assert.equal(thrice.attempts, 3);
    assert.equal(sent.length, 4);
    const readOnlyBatch = await sql.batch([sql`select 1`], { readOnly: true }).catch((e) => e);
    assert.equal(readOnlyBatch.attempts, 3);
  });

  test('aborting during the backoff stops the retries', async () => {
    const { fetch, calls } = fakeFetch(() => json(503, { error: { kind: 'queue_full', message: 'full' } }, { 'retry-after': '5' }));
    const sql = createClient({ url: 'http://127.0.0.1:1', apiKey: 'k', fetch, retry: { maxElapsedMs: 60_000 } });
    const started = Date.now();
    const error = await sql.query('select 1', [], { signal: AbortSignal.timeout(200) }).catch((e) => e);
    assert.equal(error.kind, 'aborted');
    assert.equal(calls.length, 1);
    assert.ok(Date.now() - started < 2000);
  });

  test('never inside a transaction callback; BEGIN and COMMIT are retried', async () => {
    const paths: string[] = [];
    let begins = 0;
    const { fetch } = fakeFetch((url) => {
      const path = new URL(url).pathname;
      paths.push(path);
      if (path === '/v1/transactions') {
        return ++begins === 1
          ? json(503, { error: { kind: 'too_many_transactions', message: 'busy' } }, { 'retry-after': '0' })
          : json(201, { id: 'tx_1', idleTimeoutMs: 5000, expiresAt: new Date().toISOString() });
      }
      if (path.endsWith('/query')) return json(429, { error: { kind: 'rate_limited', message: 'slow down' } }, { 'retry-after': '0' });
      return json(200, { command: 'ROLLBACK' });
    });
    const sql = createClient({ url: 'http://127.0.0.1:1', apiKey: 'k', fetch, retry: { baseDelayMs: 1 } });
    const error = await sql.transaction((tx) => tx`select 1`).catch((e) => e);
    assert.equal(error.kind, 'rate_limited');
    assert.equal(error.attempts, 1);
    assert.deepEqual(paths, ['/v1/transactions', '/v1/transactions', '/v1/transactions/tx_1/query', '/v1/transactions/tx_1/rollback']);
  });
});
