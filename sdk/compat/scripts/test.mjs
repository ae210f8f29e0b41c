// `npm test`: real Neon-protocol clients (the `@neondatabase/serverless` driver, Drizzle's
// neon-http, Prisma's PrismaNeonHttp), unchanged but for their endpoint, against a real gateway
// and a throwaway Postgres from `sluice dev`. Generates the Prisma client offline, bundles the
// TypeScript test, runs every test file with node's test runner, and stops the gateway.
// The gateway binary comes from $SLUICE_BIN, by default the repository's debug build.

import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { gatewayBinary, startDevGateway } from '../../../scripts/dev-gateway.mjs';

// Prisma 7 needs Node.js 20.19+, 22.12+ or 24+; on an older Node.js its test is skipped, loudly.
const [major, minor] = process.versions.node.split('.').map(Number);
const prismaRuns = !(major < 20 || (major === 20 && minor < 19) || major === 21 || (major === 22 && minor < 12) || major === 23);
if (!prismaRuns) console.warn(`SKIPPING the Prisma test: Prisma 7 needs Node.js 20.19+, 22.12+ or 24+, not ${process.version}.`);

const root = fileURLToPath(new URL('..', import.meta.url));
process.chdir(root);
const bin = gatewayBinary();

const run = (command, args, env = {}) => {
  const result = spawnSync(process.execPath, [command, ...args], { stdio: 'inherit', env: { ...process.env, ...env } });
  if (result.status !== 0) process.exit(result.status ?? 1);
};

rmSync('.test-build', { recursive: true, force: true });
mkdirSync('.test-build', { recursive: true });
if (prismaRuns) {
  // `prisma generate` needs no engine for the `prisma-client` generator, but the CLI downloads the
  // schema engine (used by migrate and db push, not by generate) unless it is told where one is.
  // Naming a stand-in (scripts/no-schema-engine, which only explains) skips the download, so
  // generation works offline.
  run('node_modules/prisma/build/index.js', ['generate', '--schema', 'prisma/schema.prisma'], {
    PRISMA_SCHEMA_ENGINE_BINARY: process.env.PRISMA_SCHEMA_ENGINE_BINARY ?? resolve('scripts/no-schema-engine'),
    PRISMA_HIDE_UPDATE_MESSAGE: '1',
  });
  // The generated client is TypeScript: bundle the test that uses it (packages stay external).
  run('node_modules/esbuild/bin/esbuild', [
    'test/prisma.test.ts', '--bundle', '--platform=node', '--format=esm', '--packages=external',
    '--outfile=.test-build/prisma.test.mjs', '--log-level=warning',
  ]);
}

const log = '.test-build/gateway.log';
const { dev, stop } = await startDevGateway(bin, log);

const files = process.argv.slice(2).length
  ? process.argv.slice(2)
  : [
      ...readdirSync('test').filter((f) => f.endsWith('.test.mjs')).sort().map((f) => `test/${f}`),
      ...(prismaRuns ? ['.test-build/prisma.test.mjs'] : []),
    ];
const tests = spawnSync(process.execPath, ['--test', '--test-reporter=spec', '--test-timeout=120000', ...files], {
  stdio: 'inherit',
  env: {
    ...process.env,
    SLUICE_TEST_URL: dev.url,
    SLUICE_TEST_API_KEY: dev.apiKey,
    // `sluice dev`'s tenant and the database it serves.
    SLUICE_TEST_TENANT: process.env.SLUICE_TEST_TENANT ?? 'demo',
    SLUICE_TEST_DATABASE: new URL(dev.databaseUrl).pathname.slice(1),
  },
});

await stop();
process.exit(tests.status ?? 1);
