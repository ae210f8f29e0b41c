// The inconsistencies of issue 14, each pinned: batch timeouts, batch row shapes in and out of a
// transaction, the transaction signal's listener, sql.query's arguments, SluiceError across the
// CJS and ESM builds.

import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { createRequire } from 'node:module';
import { describe, test } from 'node:test';
import { isSluiceError, SluiceError, type Transaction } from '@sluice/client';
import { client, fakeFetch, json, recordingFetch } from './harness.js';

const sql = client();

describe('consistency', () => {
  test('batch timeoutMs is the statements server timeout, and the client default reaches batches', async () => {
    const { fetch, sent } = recordingFetch();
    const withDefault = client({ fetch, timeoutMs: 200 });
    const error = await withDefault.batch([withDefault`select pg_sleep(5)`]).catch((e) => e);
    // Postgres's statement timeout (57014), not the client giving up.
    assert.equal(error.kind, 'database');
    assert.equal(error.code, '57014');
    assert.equal(sent[0].body.timeoutMs, 200);
    const explicit = await withDefault.batch([withDefault`select pg_sleep(5)`], { timeoutMs: 100 }).catch((e) => e);
    assert.equal(explicit.code, '57014');
    assert.equal(sent[1].body.timeoutMs, 100);
    // Inside a transaction too.
    await withDefault
      .transaction(async (tx) => {
        await tx.batch([tx`select 1`]);
      })
      .catch(() => {});
    assert.equal(sent.find((s) => /\/transactions\/[^/]+\/batch$/.test(s.url))?.body.timeoutMs, 200);
  });

  test('sql.batch rows are the same in and out of a transaction (columns of the same name survive)', async () => {
    const queries = (s: Transaction) => [s.query('select 1 as a, 2 as a', [], { rowMode: 'array' }), s`select 3 as b`] as const;
    const outside = await sql.batch(queries(sql));
    const inside = await sql.transaction((tx) => tx.batch(queries(tx)));
    assert.deepEqual(outside, [[[1, 2]], [{ b: 3 }]]);
    assert.deepEqual(inside, outside);
  });

  test('a transaction signal keeps no abort listener once the transaction ends', async () => {
    const controller = new AbortController();
    for (let i = 0; i < 3; i++) await sql.transaction((tx) => tx`select 1`, { signal: controller.signal });
    await sql.transaction(() => Promise.reject(new Error('x')), { signal: controller.signal }).catch(() => {});
    assert.equal(getEventListeners(controller.signal as any, 'abort').length, 0);
  });

  test('sql.query refuses options in the params place, and params after a template', () => {
    assert.throws(() => sql.query('select $1', { timeoutMs: 5 } as any), /`params` is an array/);
    assert.throws(() => sql.query(sql`select 1`, [1] as any), /pass only options/);
    assert.throws(() => (sql.query as any)(sql`select 1`, {}, {}), /pass only options/);
    // The documented forms still work.
    assert.ok(sql.query('select $1', [1], { timeoutMs: 5 }));
    assert.ok(sql.query('select 1', null));
    assert.ok(sql.query(sql`select 1`, { timeoutMs: 5 }));
  });

  test('an error from the CJS build is instanceof the ESM SluiceError, and isSluiceError says so', async () => {
    const require = createRequire(import.meta.url);
    const cjs = require('@sluice/client');
    assert.notEqual(cjs.SluiceError, SluiceError, 'two copies of the class, as in a dual-package install');
    const { fetch } = fakeFetch(() => json(400, { error: { kind: 'bad_request', message: 'no' } }));
    const error = await cjs.createClient({ url: 'http://127.0.0.1:1', apiKey: 'k', fetch })`select 1`.catch((e: unknown) => e);
    assert.ok(error instanceof SluiceError);
    assert.ok(isSluiceError(error));
    assert.ok(cjs.isSluiceError(new SluiceError('network', 'x')));
    assert.ok(new SluiceError('network', 'x') instanceof cjs.SluiceError);
    assert.ok(!isSluiceError(new Error('x')) && !(new Error('x') instanceof SluiceError) && !isSluiceError(null));
  });
});
