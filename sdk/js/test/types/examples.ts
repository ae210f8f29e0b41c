// The README's examples, type-checked so they stay true: a Vercel route, a Lambda handler, a
// Cloudflare Worker, Drizzle and Kysely.

import { createClient, SluiceError, type Sql } from '@sluice/client';
import { drizzle } from '@sluice/client/drizzle';
import { SluiceDialect } from '@sluice/client/kysely';
import { eq } from 'drizzle-orm';
import { integer, pgTable, text } from 'drizzle-orm/pg-core';
import { Kysely, type Generated } from 'kysely';

declare const process: { env: Record<string, string | undefined> };

// --- Vercel (app/api/users/[id]/route.ts): module scope, so warm invocations reuse it.
const sql = createClient({ url: process.env.SLUICE_URL!, apiKey: process.env.SLUICE_API_KEY! });

export async function GET(_request: Request, { params }: { params: Promise<{ id: string }> }) {
  const { id } = await params;
  const [user] = await sql<{ id: number; name: string }>`select id, name from users where id = ${Number(id)}`;
  return user ? Response.json(user) : new Response('not found', { status: 404 });
}

// --- AWS Lambda (handler.ts)
export const handler = async (event: { pathParameters?: { id?: string } }) => {
  try {
    const rows = await sql`select id, name from users where id = ${Number(event.pathParameters?.id)}`;
    return { statusCode: rows.length ? 200 : 404, body: JSON.stringify(rows[0] ?? null) };
  } catch (error) {
    // Still refused after the client's own retries: pass the back-pressure on.
    if (error instanceof SluiceError && (error.status === 429 || error.status === 503)) {
      return { statusCode: 503, headers: { 'retry-after': String(error.retryAfter ?? 1) }, body: 'busy' };
    }
    throw error;
  }
};

// --- Cloudflare Worker (src/index.ts): the client needs env, so it is made per isolate, once.
interface Env {
  SLUICE_URL: string;
  SLUICE_API_KEY: string;
}
let workerSql: Sql | undefined;

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    workerSql ??= createClient({ url: env.SLUICE_URL, apiKey: env.SLUICE_API_KEY });
    const name = new URL(request.url).searchParams.get('name') ?? 'ada';
    return Response.json(await workerSql`select id from users where name = ${name}`);
  },
};

// --- Drizzle
const users = pgTable('users', { id: integer('id').primaryKey(), name: text('name').notNull() });
const db = drizzle(sql, { schema: { users } });

export async function drizzleExample() {
  const [ada] = await db.select().from(users).where(eq(users.id, 1));
  const [[grace], everyone] = await db.batch([db.insert(users).values({ id: 2, name: 'grace' }).returning(), db.select().from(users)]);
  const name: string = ada.name + grace.name;
  const count: number = everyone.length;
  await sql.transaction(async (tx) => {
    const txdb = drizzle(tx, { schema: { users } });
    await txdb.update(users).set({ name: 'Ada' }).where(eq(users.id, 1));
  });
  return { name, count };
}

// --- Kysely
interface Database {
  users: { id: Generated<number>; name: string };
}
const kysely = new Kysely<Database>({ dialect: new SluiceDialect({ client: sql }) });

export async function kyselyExample() {
  const ada = await kysely.selectFrom('users').select(['id', 'name']).where('id', '=', 1).executeTakeFirst();
  await kysely.transaction().execute(async (trx) => {
    await trx.updateTable('users').set({ name: 'Ada' }).where('id', '=', 1).execute();
  });
  const name: string | undefined = ada?.name;
  return name;
}
