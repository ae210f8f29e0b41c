// What every test needs: the gateway's /sql endpoint and a Neon-style connection string whose
// user is the tenant and whose password is its API key. This is the whole migration from Neon:
// the connection string, and `neonConfig.fetchEndpoint`.

import { neonConfig } from '@neondatabase/serverless';

const url = process.env.SLUICE_TEST_URL;
if (!url) throw new Error('run through `npm test` (scripts/test.mjs), which starts a gateway');

export const endpoint = `${url}/sql`;
export const key = process.env.SLUICE_TEST_API_KEY;
export const tenant = process.env.SLUICE_TEST_TENANT;
export const database = process.env.SLUICE_TEST_DATABASE;
// The host is never dialled: fetchEndpoint says where requests go.
export const connectionString = `postgresql://${tenant}:${key}@sluice.test/${database}`;

neonConfig.fetchEndpoint = () => endpoint;
