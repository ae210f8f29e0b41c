// `npm test`'s last step: compiles the tests, starts a real gateway and a throwaway Postgres
// (`sluice dev`), runs every test file against them with node's test runner, and stops them.
// The gateway binary comes from $SLUICE_BIN, by default the repository's debug build.

import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, mkdirSync, openSync, readdirSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
process.chdir(root);
const bin = resolve(process.env.SLUICE_BIN ?? '../../target/debug/sluice');
try {
  accessSync(bin, constants.X_OK);
} catch {
  console.error(`The sluice gateway binary is missing: ${bin}\nBuild it with \`cargo build\` at the repository root, or point SLUICE_BIN at one.`);
  process.exit(1);
}

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
const gateway = spawn(bin, ['dev', '--listen', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'pipe', openSync(log, 'w')] });
const stopGateway = () => gateway.exitCode === null && gateway.kill('SIGTERM');
process.on('SIGINT', () => (stopGateway(), process.exit(130)));

const dev = await new Promise((resolveDev, reject) => {
  const timer = setTimeout(() => reject(new Error('`sluice dev` printed nothing within 120 s')), 120_000);
  createInterface({ input: gateway.stdout }).once('line', (line) => (clearTimeout(timer), resolveDev(JSON.parse(line))));
  gateway.once('exit', (code) => reject(new Error(`\`sluice dev\` exited with ${code}; see ${log}`)));
}).catch((error) => {
  console.error(error.message);
  stopGateway();
  process.exit(1);
});
console.log(`gateway ${dev.url} (log: ${log})`);

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

stopGateway();
const stopped = await Promise.race([
  new Promise((r) => (gateway.exitCode !== null ? r(true) : gateway.once('exit', () => r(true)))),
  new Promise((r) => setTimeout(() => r(false), 20_000)),
]);
if (!stopped) gateway.kill('SIGKILL');
process.exit(run.status ?? 1);
