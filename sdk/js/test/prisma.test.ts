// The real Prisma Client 7 (generated from test/prisma/schema.prisma by `npm test`) over the
// sluice adapter and a real gateway: CRUD with every mapped column type, relations, both forms of
// $transaction, rollback on throw, isolation levels, P2002, executeScript.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { PrismaSluice } from '@sluice/client/prisma';
import { Prisma, PrismaClient } from './prisma/generated/client.js';
import { client, recordingFetch } from './harness.js';

const sql = client();

describe('prisma', () => {
  const { fetch, sent } = recordingFetch();
  const prisma = new PrismaClient({ adapter: new PrismaSluice(client({ fetch })) });

  before(async () => {
    await sql.script(`
      drop table if exists prisma_posts, prisma_users;
      create table prisma_users (
        id serial primary key, email text not null unique, name text, balance decimal(20, 4), born date,
        seen timestamptz(3), created_at timestamp(3) not null default now(), meta jsonb, big bigint, avatar bytea,
        tags text[] not null default '{}');
      create table prisma_posts (id serial primary key, title text not null, author_id int not null references prisma_users);
    `);
  });
  after(async () => {
    await prisma.$disconnect();
    await sql.script('drop table if exists prisma_posts, prisma_users');
  });

  test('CRUD maps every column type both ways', async () => {
    const seen = new Date('2024-05-06T07:08:09.123Z');
    const ada = await prisma.user.create({
      data: {
        email: 'ada@example.com',
        name: 'Ada',
        balance: new Prisma.Decimal('1234567890.1234'),
        born: new Date('1815-12-10T00:00:00Z'),
        seen,
        meta: { tags: ['math'], nested: { n: 1 } },
        big: 9007199254740993n,
        avatar: new Uint8Array([0, 1, 254, 255]),
        tags: ['a', 'b,c', 'd"e'],
      },
    });
    assert.equal(ada.name, 'Ada');
    assert.equal(ada.balance?.toString(), '1234567890.1234');
    assert.deepEqual(ada.born, new Date('1815-12-10T00:00:00Z'));
    assert.deepEqual(ada.seen, seen);
    assert.ok(ada.createdAt instanceof Date && Math.abs(ada.createdAt.getTime() - Date.now()) < 60_000);
    assert.deepEqual(ada.meta, { tags: ['math'], nested: { n: 1 } });
    assert.equal(ada.big, 9007199254740993n);
    assert.deepEqual([...ada.avatar!], [0, 1, 254, 255]);
    assert.deepEqual(ada.tags, ['a', 'b,c', 'd"e']);

    const found = await prisma.user.findUnique({ where: { email: 'ada@example.com' } });
    assert.deepEqual(found, ada);
    const updated = await prisma.user.update({ where: { id: ada.id }, data: { name: 'Ada L.', big: { increment: 1 } } });
    assert.equal(updated.name, 'Ada L.');
    assert.equal(updated.big, 9007199254740994n);
    const { count } = await prisma.user.updateMany({ where: { email: { startsWith: 'ada@' } }, data: { name: 'Ada Lovelace' } });
    assert.equal(count, 1);
    const filtered = await prisma.user.findMany({ where: { seen: { gte: new Date('2024-01-01') }, tags: { has: 'b,c' } } });
    assert.deepEqual(
      filtered.map((u) => u.id),
      [ada.id],
    );
    await prisma.user.delete({ where: { id: ada.id } });
    assert.equal(await prisma.user.count({ where: { id: ada.id } }), 0);
  });

  test('relations: nested create, include, relation filters', async () => {
    const grace = await prisma.user.create({
      data: { email: 'grace@example.com', posts: { create: [{ title: 'cobol' }, { title: 'navy' }] } },
      include: { posts: { orderBy: { title: 'asc' } } },
    });
    assert.deepEqual(
      grace.posts.map((p) => p.title),
      ['cobol', 'navy'],
    );
    const withPosts = await prisma.user.findMany({ where: { posts: { some: { title: 'navy' } } }, select: { email: true, _count: { select: { posts: true } } } });
    assert.deepEqual(withPosts, [{ email: 'grace@example.com', _count: { posts: 2 } }]);
    const post = await prisma.post.findFirstOrThrow({ where: { title: 'cobol' }, include: { author: true } });
    assert.equal(post.author.email, 'grace@example.com');
  });

  test('$transaction with an array runs in one transaction', async () => {
    const before = sent.length;
    const [a, b] = await prisma.$transaction([
      prisma.user.create({ data: { email: 'barbara@example.com' } }),
      prisma.user.create({ data: { email: 'edsger@example.com' } }),
    ]);
    assert.ok(a.id < b.id);
    const urls = sent.slice(before).map((s) => s.url);
    assert.ok(urls.some((url) => /\/v1\/transactions$/.test(url)), 'began an interactive transaction');
    assert.ok(urls.some((url) => /\/commit$/.test(url)), 'committed it');
    // A failing statement rolls the whole array back.
    const error = await prisma
      .$transaction([prisma.user.create({ data: { email: 'kept-not@example.com' } }), prisma.user.create({ data: { email: 'barbara@example.com' } })])
      .catch((e) => e);
    assert.equal(error.code, 'P2002');
    assert.equal(await prisma.user.count({ where: { email: 'kept-not@example.com' } }), 0);
  });

  test('interactive $transaction commits, and rolls back on throw', async () => {
    const id = await prisma.$transaction(async (tx) => {
      const user = await tx.user.create({ data: { email: 'tx@example.com' } });
      await tx.post.create({ data: { title: 'in tx', authorId: user.id } });
      assert.equal(await tx.post.count({ where: { authorId: user.id } }), 1);
      return user.id;
    });
    assert.equal(await prisma.post.count({ where: { authorId: id } }), 1);

    const error = await prisma
      .$transaction(async (tx) => {
        await tx.user.create({ data: { email: 'rolled-back@example.com' } });
        throw new Error('boom');
      })
      .catch((e) => e);
    assert.equal(error.message, 'boom');
    assert.equal(await prisma.user.count({ where: { email: 'rolled-back@example.com' } }), 0);
  });

  test('interactive $transaction with an isolation level', async () => {
    const before = sent.length;
    const level = await prisma.$transaction(
      async (tx) => (await tx.$queryRaw<{ level: string }[]>`select current_setting('transaction_isolation') as level`)[0].level,
      { isolationLevel: Prisma.TransactionIsolationLevel.Serializable },
    );
    assert.equal(level, 'serializable');
    assert.deepEqual(sent.slice(before).find((s) => /\/v1\/transactions$/.test(s.url))?.body, { isolation: 'serializable' });
  });

  test('a unique violation is P2002', async () => {
    await prisma.user.create({ data: { email: 'unique@example.com' } });
    const error = await prisma.user.create({ data: { email: 'unique@example.com' } }).catch((e) => e);
    assert.ok(error instanceof Prisma.PrismaClientKnownRequestError);
    assert.equal(error.code, 'P2002');
    // Inside an interactive transaction too, and the transaction rolls back.
    const inTx = await prisma
      .$transaction(async (tx) => {
        await tx.user.create({ data: { email: 'unique-tx@example.com' } });
        await tx.user.create({ data: { email: 'unique@example.com' } });
      })
      .catch((e) => e);
    assert.equal(inTx.code, 'P2002');
    assert.equal(await prisma.user.count({ where: { email: 'unique-tx@example.com' } }), 0);
  });

  test('raw queries and executeScript', async () => {
    const rows = await prisma.$queryRaw<{ n: number; t: string }[]>`select ${41}::int + 1 as n, ${'x'}::text as t`;
    assert.deepEqual(rows, [{ n: 42, t: 'x' }]);
    assert.equal(await prisma.$executeRaw`update prisma_users set name = ${'renamed'} where email = ${'unique@example.com'}`, 1);
    const adapter = await new PrismaSluice(sql).connect();
    await adapter.executeScript('create temp table if not exists prisma_script (a int); drop table prisma_script;');
    const failed = await adapter.executeScript('select 1; select * from missing_table_for_prisma;').catch((e) => e);
    assert.equal(failed.cause?.kind, 'TableDoesNotExist');
  });
});
