// Real Kysely queries through the gateway with SluiceDialect: schema builder, CRUD, raw sql,
// introspection, and transactions mapped to interactive transactions.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SluiceError } from '@sluice/client';
import { SluiceDialect } from '@sluice/client/kysely';
import { Kysely, sql as ksql, type Generated } from 'kysely';
import { client } from './harness.js';

const sql = client();
// A literal name: Kysely's table types are keyed by it.
const people = 'kysely_people';

interface Database {
  [people]: {
    id: Generated<number>;
    name: string;
    born: Date | null;
    score: string | null;
    tags: string[] | null;
  };
}

describe('kysely', () => {
  const db = new Kysely<Database>({ dialect: new SluiceDialect({ client: sql }) });

  before(async () => {
    await db.schema.dropTable(people).ifExists().execute();
    await db.schema
      .createTable(people)
      .addColumn('id', 'serial', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull().unique())
      .addColumn('born', 'date')
      .addColumn('score', 'numeric')
      .addColumn('tags', ksql`text[]`)
      .execute();
  });
  after(async () => {
    await db.schema.dropTable(people).ifExists().execute();
    await db.destroy();
  });

  test('insert, select, update, delete', async () => {
    const inserted = await db
      .insertInto(people)
      .values({ name: 'ada', born: new Date('1815-12-10T00:00:00Z'), score: '9.75', tags: ['math'] })
      .returning(['id', 'name'])
      .executeTakeFirstOrThrow();
    assert.equal(inserted.name, 'ada');
    const ada = await db.selectFrom(people).selectAll().where('id', '=', inserted.id).executeTakeFirstOrThrow();
    assert.deepEqual(ada, { id: inserted.id, name: 'ada', born: new Date('1815-12-10T00:00:00Z'), score: '9.75', tags: ['math'] });
    const plain = await db.insertInto(people).values({ name: 'grace' }).executeTakeFirst();
    assert.equal(plain.numInsertedOrUpdatedRows, 1n);
    const updated = await db.updateTable(people).set({ score: '1' }).where('name', 'in', ['ada', 'grace']).executeTakeFirst();
    assert.equal(updated.numUpdatedRows, 2n);
    const deleted = await db.deleteFrom(people).where('name', '=', 'grace').executeTakeFirst();
    assert.equal(deleted.numDeletedRows, 1n);
  });

  test('raw sql and values that try to inject', async () => {
    const evil = "'; drop table demo; --";
    const { rows } = await ksql<{ v: string }>`select ${evil}::text as v`.execute(db);
    assert.deepEqual(rows, [{ v: evil }]);
    const found = await db.selectFrom(people).select('name').where('name', '=', evil).execute();
    assert.deepEqual(found, []);
  });

  test('errors are SluiceErrors', async () => {
    const error = await db
      .insertInto(people)
      .values({ name: 'ada' })
      .execute()
      .catch((e) => e);
    assert.ok(error instanceof SluiceError);
    assert.equal(error.code, '23505');
  });

  test('introspection', async () => {
    const tables = await db.introspection.getTables();
    const table = tables.find((t) => t.name === people);
    assert.ok(table);
    assert.deepEqual(
      table.columns.map((c) => c.name),
      ['id', 'name', 'born', 'score', 'tags'],
    );
  });

  test('a transaction commits, with its settings', async () => {
    const level = await db
      .transaction()
      .setIsolationLevel('serializable')
      .execute(async (trx) => {
        await trx.insertInto(people).values({ name: 'edsger' }).execute();
        const { rows } = await ksql<{ transaction_isolation: string }>`show transaction_isolation`.execute(trx);
        return rows[0].transaction_isolation;
      });
    assert.equal(level, 'serializable');
    assert.ok(await db.selectFrom(people).select('id').where('name', '=', 'edsger').executeTakeFirst());
  });

  test('a transaction rolls back when its callback throws', async () => {
    const error = await db
      .transaction()
      .execute(async (trx) => {
        await trx.insertInto(people).values({ name: 'barbara' }).execute();
        throw new Error('roll back');
      })
      .catch((e) => e);
    assert.equal(error.message, 'roll back');
    assert.equal(await db.selectFrom(people).select('id').where('name', '=', 'barbara').executeTakeFirst(), undefined);
  });

  test('controlled transactions and savepoints', async () => {
    const trx = await db.startTransaction().execute();
    await trx.insertInto(people).values({ name: 'kept' }).execute();
    const savepoint = await trx.savepoint('before_dropped').execute();
    await savepoint.insertInto(people).values({ name: 'dropped' }).execute();
    const back = await savepoint.rollbackToSavepoint('before_dropped').execute();
    await back.commit().execute();
    const names = await db.selectFrom(people).select('name').where('name', 'in', ['kept', 'dropped']).execute();
    assert.deepEqual(names, [{ name: 'kept' }]);
  });
});
