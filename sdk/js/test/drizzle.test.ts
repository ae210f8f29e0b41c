// Real Drizzle queries through the gateway with the session-based driver: every column type,
// relational queries, db.batch, db.transaction (commit, rollback, savepoints, isolation), migrate;
// and the 0.1 pg-proxy entry point, kept for existing code.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SluiceError } from '@sluice/client';
import { drizzle, drizzleCallback } from '@sluice/client/drizzle';
import { migrate } from '@sluice/client/drizzle/migrator';
import { drizzle as drizzleProxy } from '@sluice/client/drizzle-proxy';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { migrate as proxyMigrate } from 'drizzle-orm/pg-proxy/migrator';
import { asc, eq, relations, sql as dsql } from 'drizzle-orm';
import { drizzle as pgProxy } from 'drizzle-orm/pg-proxy';
import { bigint, date, integer, jsonb, numeric, pgTable, serial, text, timestamp } from 'drizzle-orm/pg-core';
import { client, recordingFetch, tableName } from './harness.js';

const sql = client();
// Literal names: Drizzle's relation types are keyed by them.
const usersName = 'drizzle_users';
const postsName = 'drizzle_posts';

const users = pgTable(usersName, {
  id: serial('id').primaryKey(),
  name: text('name').notNull(),
  born: date('born', { mode: 'date' }),
  seen: timestamp('seen', { withTimezone: true, mode: 'date' }),
  seenText: timestamp('seen_text', { mode: 'string' }),
  big: bigint('big', { mode: 'bigint' }),
  balance: numeric('balance'),
  meta: jsonb('meta').$type<{ tags: string[] }>(),
  tags: text('tags').array(),
});
const posts = pgTable(postsName, {
  id: serial('id').primaryKey(),
  userId: integer('user_id')
    .notNull()
    .references(() => users.id),
  title: text('title').notNull(),
});
const usersRelations = relations(users, ({ many }) => ({ posts: many(posts) }));
const postsRelations = relations(posts, ({ one }) => ({ author: one(users, { fields: [posts.userId], references: [users.id] }) }));
const schema = { users, posts, usersRelations, postsRelations };

describe('drizzle', () => {
  const db = drizzle(sql, { schema });

  before(async () => {
    await sql`drop table if exists ${sql.id(postsName)}, ${sql.id(usersName)}`;
    await sql`create table ${sql.id(usersName)} (
      id serial primary key, name text not null, born date, seen timestamptz, seen_text timestamp,
      big bigint, balance numeric, meta jsonb, tags text[])`;
    await sql`create table ${sql.id(postsName)} (id serial primary key, user_id int not null references ${sql.id(usersName)}, title text not null)`;
  });
  after(async () => {
    await sql`drop table if exists ${sql.id(postsName)}, ${sql.id(usersName)}`;
  });

  test('insert returning and select map every column type', async () => {
    const seen = new Date('2024-05-06T07:08:09.123Z');
    const [ada] = await db
      .insert(users)
      .values({
        name: 'ada',
        born: new Date('1815-12-10T00:00:00Z'),
        seen,
        seenText: '2024-05-06 07:08:09.123456',
        big: 9007199254740993n,
        balance: '12345678901234567890.5',
        meta: { tags: ['math'] },
        tags: ['a', 'b,c', 'd"e'],
      })
      .returning();
    assert.equal(ada.name, 'ada');
    assert.deepEqual(ada.born, new Date('1815-12-10T00:00:00Z'));
    assert.deepEqual(ada.seen, seen);
    assert.equal(ada.seenText, '2024-05-06 07:08:09.123456');
    assert.equal(ada.big, 9007199254740993n);
    assert.equal(ada.balance, '12345678901234567890.5');
    assert.deepEqual(ada.meta, { tags: ['math'] });
    assert.deepEqual(ada.tags, ['a', 'b,c', 'd"e']);
    const [again] = await db.select().from(users).where(eq(users.id, ada.id));
    assert.deepEqual(again, ada);
  });

  test('partial selects, joins, update, delete, raw sql', async () => {
    const [grace] = await db.insert(users).values({ name: 'grace' }).returning({ id: users.id });
    await db.insert(posts).values([
      { userId: grace.id, title: 'cobol' },
      { userId: grace.id, title: 'navy' },
    ]);
    const joined = await db
      .select({ name: users.name, title: posts.title })
      .from(posts)
      .innerJoin(users, eq(users.id, posts.userId))
      .orderBy(asc(posts.title));
    assert.deepEqual(joined, [
      { name: 'grace', title: 'cobol' },
      { name: 'grace', title: 'navy' },
    ]);
    const updated = await db.update(users).set({ balance: '1.5' }).where(eq(users.id, grace.id)).returning({ balance: users.balance });
    assert.deepEqual(updated, [{ balance: '1.5' }]);
    const raw = await db.execute(dsql`select ${grace.id}::int as id, count(*)::int as n from ${posts} where ${posts.userId} = ${grace.id}`);
    assert.deepEqual(raw.rows, [{ id: grace.id, n: 2 }]);
    assert.equal(raw.command, 'SELECT');
    await db.delete(posts).where(eq(posts.userId, grace.id));
    assert.deepEqual(await db.select().from(posts).where(eq(posts.userId, grace.id)), []);
  });

  test('relational queries', async () => {
    const [edsger] = await db.insert(users).values({ name: 'edsger' }).returning();
    await db.insert(posts).values({ userId: edsger.id, title: 'goto' });
    const found = await db.query.users.findFirst({ where: eq(users.id, edsger.id), with: { posts: true } });
    assert.equal(found?.name, 'edsger');
    assert.deepEqual(
      found?.posts.map((p) => p.title),
      ['goto'],
    );
  });

  test('the bare pg-proxy callback gives arrays for method all', async () => {
    const { fetch, sent } = recordingFetch();
    const proxied = pgProxy(drizzleCallback(client({ fetch })), { schema });
    const rows = await proxied.select({ id: users.id, name: users.name }).from(users).where(eq(users.name, 'ada'));
    assert.equal(rows.length, 1);
    assert.equal(rows[0].name, 'ada');
    assert.equal(sent[0].body.rowMode, 'array');
  });

  test('values are bound, never interpolated', async () => {
    const evil = "x'); drop table demo; --";
    const [row] = await db.insert(users).values({ name: evil }).returning({ name: users.name });
    assert.equal(row.name, evil);
    assert.equal((await sql`select count(*)::int as n from demo`)[0].n >= 3, true);
  });

  test('errors come through with the SluiceError as their cause', async () => {
    const error = await db
      .insert(posts)
      .values({ userId: -1, title: 'orphan' })
      .catch((e) => e);
    const cause = error instanceof SluiceError ? error : error.cause;
    assert.ok(cause instanceof SluiceError);
    assert.equal(cause.code, '23503'); // foreign_key_violation
  });

  test('db.batch runs the queries in one atomic request', async () => {
    const { fetch, sent } = recordingFetch();
    const batching = drizzle(client({ fetch }), { schema });
    const [inserted, counted, found] = await batching.batch([
      batching.insert(users).values({ name: 'barbara' }).returning({ id: users.id, name: users.name }),
      batching.select({ n: dsql<number>`count(*)::int` }).from(users),
      batching.query.users.findFirst({ where: eq(users.name, 'barbara') }),
    ]);
    assert.equal(sent.length, 1);
    assert.match(sent[0].url, /\/v1\/batch$/);
    assert.equal(inserted[0].name, 'barbara');
    assert.ok(counted[0].n >= 1);
    assert.equal(found?.id, inserted[0].id);
    const error = await batching
      .batch([batching.insert(users).values({ name: 'rolled back' }), batching.insert(posts).values({ userId: -1, title: 'orphan' })])
      .catch((e) => e);
    assert.ok(error);
    assert.deepEqual(await db.select().from(users).where(eq(users.name, 'rolled back')), []);
  });

  test('interactive transactions: drizzle over tx', async () => {
    await sql.transaction(async (tx) => {
      const txdb = drizzle(tx, { schema });
      await txdb.insert(users).values({ name: 'in tx' });
      const [row] = await txdb.select().from(users).where(eq(users.name, 'in tx'));
      assert.equal(row.name, 'in tx');
    });
    assert.equal((await db.select().from(users).where(eq(users.name, 'in tx'))).length, 1);
    await sql
      .transaction(async (tx) => {
        await drizzle(tx, { schema }).insert(users).values({ name: 'never' });
        throw new Error('roll back');
      })
      .catch(() => {});
    assert.deepEqual(await db.select().from(users).where(eq(users.name, 'never')), []);
  });

  test('db.transaction commits, and rolls back when the callback throws', async () => {
    const { fetch, sent } = recordingFetch();
    const txdb = drizzle(client({ fetch }), { schema });
    const id = await txdb.transaction(async (tx) => {
      const [row] = await tx.insert(users).values({ name: 'committed' }).returning({ id: users.id });
      const [seen] = await tx.select().from(users).where(eq(users.id, row.id));
      assert.equal(seen.name, 'committed');
      return row.id;
    });
    assert.ok(sent.some((s) => /\/v1\/transactions$/.test(s.url)));
    assert.ok(sent.some((s) => /\/commit$/.test(s.url)));
    assert.equal((await db.select().from(users).where(eq(users.id, id))).length, 1);
    const error = await db
      .transaction(async (tx) => {
        await tx.insert(users).values({ name: 'rolled back by throw' });
        throw new Error('boom');
      })
      .catch((e) => e);
    assert.equal(error.message, 'boom');
    assert.deepEqual(await db.select().from(users).where(eq(users.name, 'rolled back by throw')), []);
    // tx.rollback() throws drizzle's TransactionRollbackError, which rolls back too.
    await db
      .transaction(async (tx) => {
        await tx.insert(users).values({ name: 'rolled back by tx.rollback' });
        tx.rollback();
      })
      .catch(() => {});
    assert.deepEqual(await db.select().from(users).where(eq(users.name, 'rolled back by tx.rollback')), []);
  });

  test('nested tx.transaction is a savepoint', async () => {
    await db.transaction(async (tx) => {
      await tx.insert(users).values({ name: 'outer' });
      await tx
        .transaction(async (inner) => {
          await inner.insert(users).values({ name: 'inner rolled back' });
          throw new Error('inner');
        })
        .catch(() => {});
      await tx.transaction(async (inner) => {
        await inner.insert(users).values({ name: 'inner kept' });
        await inner.transaction(async (deeper) => {
          await deeper.insert(users).values({ name: 'deeper kept' });
        });
      });
    });
    const names = (await db.select({ name: users.name }).from(users)).map((r) => r.name);
    assert.ok(names.includes('outer'));
    assert.ok(names.includes('inner kept'));
    assert.ok(names.includes('deeper kept'));
    assert.ok(!names.includes('inner rolled back'));
  });

  test('db.transaction passes isolationLevel and accessMode to the gateway', async () => {
    const { fetch, sent } = recordingFetch();
    const txdb = drizzle(client({ fetch }), { schema });
    const level = await txdb.transaction(
      async (tx) => (await tx.execute<{ level: string }>(dsql`select current_setting('transaction_isolation') as level`)).rows[0].level,
      { isolationLevel: 'serializable', accessMode: 'read only' },
    );
    assert.equal(level, 'serializable');
    assert.deepEqual(sent[0].body, { isolation: 'serializable', readOnly: true });
    const error = await txdb
      .transaction((tx) => tx.insert(users).values({ name: 'read only' }), { accessMode: 'read only' })
      .catch((e) => e);
    assert.equal((error instanceof SluiceError ? error : error.cause).code, '25006'); // read_only_sql_transaction
  });

  test('db.batch inside a transaction, and relational queries in it', async () => {
    await db.transaction(async (tx) => {
      const [inserted, found] = await tx.batch([
        tx.insert(users).values({ name: 'batched in tx' }).returning(),
        tx.query.users.findMany({ where: eq(users.name, 'batched in tx') }),
      ]);
      assert.equal(inserted[0].name, 'batched in tx');
      assert.equal(found.length, 1);
    });
  });

  test('migrate applies pending migrations once and is a no-op on an up-to-date database', async () => {
    const folder = mkdtempSync(join(tmpdir(), 'sluice-drizzle-migrations-'));
    const table = tableName('drizzle_migrated');
    const migrationsSchema = tableName('drizzle_meta');
    mkdirSync(join(folder, 'meta'));
    writeFileSync(
      join(folder, 'meta', '_journal.json'),
      JSON.stringify({ version: '7', dialect: 'postgresql', entries: [{ idx: 0, version: '7', when: 1700000000000, tag: '0000_init', breakpoints: true }] }),
    );
    writeFileSync(
      join(folder, '0000_init.sql'),
      `CREATE TABLE "${table}" (id int primary key);\n--> statement-breakpoint\nINSERT INTO "${table}" VALUES (1); INSERT INTO "${table}" VALUES (2);`,
    );
    const { fetch, sent } = recordingFetch();
    const migrating = drizzle(client({ fetch }));
    await migrate(migrating, { migrationsFolder: folder, migrationsSchema });
    assert.deepEqual(await sql`select id from ${sql.id(table)} order by id`, [{ id: 1 }, { id: 2 }]);
    const first = sent.length;
    await migrate(migrating, { migrationsFolder: folder, migrationsSchema });
    // Only the bookkeeping (create if not exists, select the last): no migration script, no error.
    assert.equal(sent.length, first + 2);
    assert.match(sent.at(-1)!.body.sql, /^select created_at/);
    assert.deepEqual(await sql`select count(*)::int as n from ${sql.id(table)}`, [{ n: 2 }]);
    await sql`drop table ${sql.id(table)}`;
    await sql`drop schema ${sql.id(migrationsSchema)} cascade`;
  });

  test('pg-proxy migrator rerun on an up-to-date database (statements is empty)', async () => {
    const folder = mkdtempSync(join(tmpdir(), 'sluice-drizzle-proxy-migrations-'));
    const table = tableName('drizzle_proxy_migrated');
    mkdirSync(join(folder, 'meta'));
    writeFileSync(
      join(folder, 'meta', '_journal.json'),
      JSON.stringify({ version: '7', dialect: 'postgresql', entries: [{ idx: 0, version: '7', when: 1700000000001, tag: '0000_init', breakpoints: true }] }),
    );
    writeFileSync(join(folder, '0000_init.sql'), `CREATE TABLE "${table}" (id int primary key);`);
    const proxied = drizzleProxy(sql);
    // The README's 0.1 recipe: the migrator's statements as one batch.
    const run = () => proxyMigrate(proxied, (queries) => sql.batch(queries.map((q) => sql.unsafe(q))).then(() => {}), { migrationsFolder: folder });
    await run();
    await run();
    assert.deepEqual(await sql`select count(*)::int as n from ${sql.id(table)}`, [{ n: 0 }]);
    await sql`drop table ${sql.id(table)}`;
  });

  test('the 0.1 pg-proxy entry point still works', async () => {
    const proxied = drizzleProxy(sql, { schema });
    const rows = await proxied.select({ name: users.name }).from(users).where(eq(users.name, 'ada'));
    assert.deepEqual(rows, [{ name: 'ada' }]);
    const raw = await proxied.execute(dsql`select 1 as one`);
    assert.deepEqual(raw, [{ one: 1 }]);
  });
});
