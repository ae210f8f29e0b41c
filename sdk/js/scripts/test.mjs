// `npm test`'s last step: compiles the tests, starts a real gateway and a throwaway Postgres
// (`sluice dev`), runs every test file against them with node's test runner, and stops them.
// The gateway binary comes from $SLUICE_BIN, by default the repository's debug build.

import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { gatewayBinary, startDevGateway } from '../../../scripts/dev-gateway.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
process.chdir(root);
const bin = gatewayBinary();

rmSync('.test-build', { recursive: true, force: true });
// Prisma's client for test/prisma.test.ts. The `prisma-client` generator needs no engine, but the
// CLI fetches its schema engine (for migrations, unused here) at start unless
// PRISMA_SCHEMA_ENGINE_BINARY names one: any executable will do for `generate`, which never runs it.
const generate = spawnSync(process.execPath, ['node_modules/prisma/build/index.js', 'generate', '--schema', 'test/prisma/schema.prisma'], {
  stdio: 'inherit',
  env: { PRISMA_SCHEMA_ENGINE_BINARY: process.execPath, PRISMA_HIDE_UPDATE_MESSAGE: '1', ...process.env },
});
if (generate.status !== 0) process.exit(generate.status ?? 1);
const tsc = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'test'], { stdio: 'inherit' });
if (tsc.status !== 0) process.exit(tsc.status ?? 1);

mkdirSync('.test-build', { recursive: true });
const log = '.test-build/gateway.log';
const { dev, stop } = await startDevGateway(bin, log);

const files = process.argv.slice(2).length
  ? process.argv.slice(2)
  : readdirSync('.test-build/test').filter((f) => f.endsWith('.test.js')).sort().map((f) => `.test-build/test/${f}`);
// Every test ends by itself; the runner's own timeout (Node 20.11+) is a backstop.
const [major, minor] = process.versions.node.split('.').map(Number);
const timeout = major > 20 || (major === 20 && minor >= 11) ? ['--test-timeout=120000'] : [];
const run = spawnSync(process.execPath, ['--test', '--test-reporter=spec', ...timeout, ...files], {
  stdio: 'inherit',
  env: {
    ...process.env,
    SLUICE_BIN: bin,
    SLUICE_TEST_URL: dev.url,
    SLUICE_TEST_API_KEY: dev.apiKey,
    SLUICE_TEST_DATABASE_URL: dev.databaseUrl,
  },
});

await stop();
process.exit(run.status ?? 1);
