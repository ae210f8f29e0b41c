// Compiled by `npm test` with `lib: ["ES2022"]`, no DOM and no @types/node, and without
// skipLibCheck: the core entry's declarations must not need DOM's fetch or AbortSignal types.

import { createClient, isSluiceError, SluiceError, type QueryOptions, type Sql } from '@sluice/client';

export async function example(signal: QueryOptions['signal']): Promise<number> {
  const sql: Sql = createClient({ url: 'http://127.0.0.1:8080', apiKey: 'key' });
  const rows = await sql<{ n: number }>`select 1 as n`;
  for await (const row of sql<{ n: number }>`select 1 as n`.stream()) void row.n;
  await sql.transaction(async (tx) => tx`select 1`, { signal });
  try {
    await sql.batch([sql`select 1`], { timeoutMs: 5 });
  } catch (error) {
    if (isSluiceError(error) || error instanceof SluiceError) return -1;
  }
  return rows[0].n;
}
