// drizzle-orm/neon-http over the real driver, unchanged but for the endpoint (see env.mjs):
// schema-typed CRUD with returning, relational queries, raw SQL, and db.batch (one transaction).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { neon } from '@neondatabase/serverless';
import { asc, eq, relations, sql as raw } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/neon-http';
import { bigint, boolean, integer, jsonb, pgTable, serial, text, timestamp } from 'drizzle-orm/pg-core';

import { connectionString } from './env.mjs';

const users = pgTable('drizzle_users', {
  id: serial('id').primaryKey(),
  name: text('name').notNull(),
  email: text('email').unique(),
  active: boolean('active').notNull().default(true),
  visits: bigint('visits', { mode: 'bigint' }).notNull().default(0n),
  prefs: jsonb('prefs').$type(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});
const notes = pgTable('drizzle_notes', {
  id: serial('id').primaryKey(),
  userId: integer('user_id').notNull().references(() => users.id),
  body: text('body').notNull(),
});
const usersRelations = relations(users, ({ many }) => ({ notes: many(notes) }));
const notesRelations = relations(notes, ({ one }) => ({ user: one(users, { fields: [notes.userId], references: [users.id] }) }));

const db = drizzle({ client: neon(connectionString), schema: { users, notes, usersRelations, notesRelations } });

before(async () => {
  await db.execute(raw`DROP TABLE IF EXISTS drizzle_notes, drizzle_users`);
  await db.execute(raw`CREATE TABLE drizzle_users (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, active boolean NOT NULL DEFAULT true, visits int8 NOT NULL DEFAULT 0, prefs jsonb, created_at timestamptz NOT NULL DEFAULT now())`);
  await db.execute(raw`CREATE TABLE drizzle_notes (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES drizzle_users(id), body text NOT NULL)`);
});

after(async () => {
  await db.execute(raw`DROP TABLE IF EXISTS drizzle_notes, drizzle_users`);
});

test('insert, select, update and delete with returning', async () => {
  const [ada] = await db
    .insert(users)
    .values({ name: 'ada', email: 'ada@example.com', visits: 9007199254740993n, prefs: { theme: 'dark' } })
    .returning();
  assert.equal(ada.name, 'ada');
  assert.equal(ada.visits, 9007199254740993n);
  assert.deepEqual(ada.prefs, { theme: 'dark' });
  assert.ok(ada.createdAt instanceof Date);

  await db.insert(users).values([{ name: 'grace' }, { name: 'linus', active: false }]);
  const active = await db.select({ name: users.name }).from(users).where(eq(users.active, true)).orderBy(asc(users.id));
  assert.deepEqual(active, [{ name: 'ada' }, { name: 'grace' }]);

  const [updated] = await db.update(users).set({ visits: raw`${users.visits} + 1` }).where(eq(users.name, 'grace')).returning({ visits: users.visits });
  assert.equal(updated.visits, 1n);

  const deleted = await db.delete(users).where(eq(users.name, 'linus')).returning({ id: users.id });
  assert.equal(deleted.length, 1);
  const [{ count }] = await db.select({ count: raw`count(*)`.mapWith(Number) }).from(users);
  assert.equal(count, 2);
});

test('db.batch runs its statements in one transaction', async () => {
  const [[carol], inserted, all] = await db.batch([
    db.insert(users).values({ name: 'carol' }).returning({ id: users.id }),
    db.insert(notes).values({ userId: raw`(SELECT id FROM drizzle_users WHERE name = 'carol')`, body: 'hello' }).returning(),
    db.select().from(users).orderBy(asc(users.id)),
  ]);
  assert.ok(carol.id > 0);
  assert.equal(inserted[0].body, 'hello');
  assert.equal(all.at(-1).name, 'carol');

  // The second statement fails: the first is rolled back with it.
  await assert.rejects(
    db.batch([db.insert(users).values({ name: 'dave' }), db.insert(users).values({ name: 'eve', email: 'ada@example.com' })]),
    (error) => (error.cause ?? error).code === '23505',
  );
  const dave = await db.select().from(users).where(eq(users.name, 'dave'));
  assert.deepEqual(dave, []);
});

test('relational queries', async () => {
  const found = await db.query.users.findFirst({ where: eq(users.name, 'carol'), with: { notes: true } });
  assert.equal(found.name, 'carol');
  assert.deepEqual(found.notes.map((n) => n.body), ['hello']);
  const many = await db.query.notes.findMany({ with: { user: { columns: { name: true } } } });
  assert.deepEqual(many.map((n) => n.user.name), ['carol']);
});

test('raw SQL through db.execute', async () => {
  const result = await db.execute(raw`SELECT ${42}::int AS answer`);
  assert.deepEqual(result.rows, [{ answer: 42 }]);
});
