// Prisma 7's client (generated offline by scripts/test.mjs from prisma/schema.prisma) over
// `@prisma/adapter-neon`'s PrismaNeonHttp, unchanged but for the endpoint (see env.mjs).
// HTTP mode has no interactive transactions (the adapter refuses them, as against Neon), so
// only single statements are used: create, find, update, aggregate, delete, raw queries.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { neon } from '@neondatabase/serverless';
import { PrismaNeonHttp } from '@prisma/adapter-neon';

import { PrismaClient } from '../.generated/prisma/client';
import { connectionString } from './env.mjs';

const prisma = new PrismaClient({ adapter: new PrismaNeonHttp(connectionString, {}) });
const sql = neon(connectionString);

before(async () => {
  await sql`DROP TABLE IF EXISTS "Post", "Author"`;
  await sql`CREATE TABLE "Author" (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE)`;
  await sql`CREATE TABLE "Post" (id serial PRIMARY KEY, title text NOT NULL, views int8 NOT NULL DEFAULT 0, "authorId" int NOT NULL REFERENCES "Author"(id))`;
});

after(async () => {
  await prisma.$disconnect();
  await sql`DROP TABLE IF EXISTS "Post", "Author"`;
});

test('create, find, update, count and delete', async () => {
  const ada = await prisma.author.create({ data: { name: 'Ada', email: 'ada@example.com' } });
  assert.equal(ada.name, 'Ada');
  const post = await prisma.post.create({ data: { title: 'Notes', views: 9007199254740993n, authorId: ada.id } });
  assert.equal(post.views, 9007199254740993n);

  const found = await prisma.author.findUnique({ where: { email: 'ada@example.com' }, include: { posts: true } });
  assert.equal(found?.posts[0].title, 'Notes');

  const updated = await prisma.post.update({ where: { id: post.id }, data: { views: { increment: 1 } } });
  assert.equal(updated.views, 9007199254740994n);
  assert.equal(await prisma.post.count({ where: { authorId: ada.id } }), 1);

  await prisma.post.delete({ where: { id: post.id } });
  assert.equal(await prisma.post.count(), 0);
});

test('a unique violation surfaces with Postgres\'s code', async () => {
  // PrismaNeonHttp (7.10.0) hands the driver's NeonDbError on without mapping it to P2002 (its
  // WebSocket adapter maps; the HTTP one does not), so Prisma reports Postgres's code: the same
  // as against Neon.
  await assert.rejects(
    prisma.author.create({ data: { name: 'Other', email: 'ada@example.com' } }),
    (error: any) => error.code === '23505' && /Author_email_key/.test(error.message),
  );
});

test('raw queries', async () => {
  const rows = await prisma.$queryRaw<{ n: number; t: string }[]>`SELECT ${41}::int + 1 AS n, 'x'::text AS t`;
  assert.deepEqual(rows, [{ n: 42, t: 'x' }]);
  const changed = await prisma.$executeRaw`UPDATE "Author" SET name = ${'Ada L.'} WHERE email = ${'ada@example.com'}`;
  assert.equal(changed, 1);
});
