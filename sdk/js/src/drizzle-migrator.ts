// `migrate(db, { migrationsFolder })` for the sluice Drizzle driver (`@sluice/client/drizzle/migrator`):
// drizzle-kit's migrations as one script (`/v1/batch` script mode) in one transaction. Its own
// entry point because drizzle-orm's migration reader needs Node's `fs`.

import { readMigrationFiles, type MigrationConfig } from 'drizzle-orm/migrator';
import type { Sql } from './client.js';
import type { SluiceDatabase } from './drizzle.js';

/**
 * Applies the migrations in `migrationsFolder` (drizzle-kit's output) that the database has not
 * seen, as drizzle-orm's own migrators do and in the same table (`drizzle.__drizzle_migrations`
 * by default), but as one script in one transaction. An up-to-date database gets only the
 * bookkeeping check: no script, no empty batch.
 */
export async function migrate(db: SluiceDatabase<any>, config: MigrationConfig): Promise<void> {
  const client = db.$client as Sql;
  if (typeof client.script !== 'function') throw new TypeError('migrate: pass a database made from the client, not from a transaction');
  const migrations = readMigrationFiles(config);
  const table = `${ident(config.migrationsSchema ?? 'drizzle')}.${ident(config.migrationsTable ?? '__drizzle_migrations')}`;
  // Two calls, since a batch prepares every statement before running any: the select could not
  // be prepared before the table exists.
  await client.script(
    `create schema if not exists ${ident(config.migrationsSchema ?? 'drizzle')};\n` +
      `create table if not exists ${table} (id serial primary key, hash text not null, created_at bigint)`,
  );
  const last = await client.unsafe<{ created_at: string }>(`select created_at from ${table} order by created_at desc limit 1`);
  const after = last.length ? Number(last[0].created_at) : -Infinity;
  const pending = migrations.filter((migration) => migration.folderMillis > after);
  if (!pending.length) return;
  const script = pending.flatMap((migration) => [
    ...migration.sql,
    // Both values come from drizzle-kit's files: a hex hash and a number.
    `insert into ${table} ("hash", "created_at") values ('${migration.hash.replace(/'/g, "''")}', ${Number(migration.folderMillis)})`,
  ]);
  await client.script(script.join('\n;\n'));
}

function ident(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}
