// What the tests share: the dev gateway started by scripts/test.mjs, clients for it, a recording
// fetch, and a second gateway (`sluice serve`) with a config of the test's choosing.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient, type ClientOptions, type Sql } from '@sluice/client';

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests with \`npm test\`, which starts the gateway`);
  return value;
}

export const gateway = {
  url: required('SLUICE_TEST_URL'),
  apiKey: required('SLUICE_TEST_API_KEY'),
  databaseUrl: required('SLUICE_TEST_DATABASE_URL'),
};

export function client(options: Partial<ClientOptions> = {}): Sql {
  return createClient({ url: gateway.url, apiKey: gateway.apiKey, ...options });
}

/** A unique name for a table of one test, so test files can run at the same time. */
export function tableName(prefix: string): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

export interface Sent {
  url: string;
  body: any;
  headers: Record<string, string>;
  status?: number;
}

/** A fetch that passes through to the real one and records each request and its status. */
export function recordingFetch(): { fetch: typeof fetch; sent: Sent[] } {
  const sent: Sent[] = [];
  const recording: typeof fetch = async (input, init) => {
    const entry: Sent = {
      url: String(input),
      body: init?.body ? JSON.parse(String(init.body)) : undefined,
      headers: Object.fromEntries(new Headers(init?.headers).entries()),
    };
    sent.push(entry);
    const response = await fetch(input, init);
    entry.status = response.status;
    return response;
  };
  return { fetch: recording, sent };
}

/** A fetch that never touches the network: `answer` decides every response. */
export function fakeFetch(answer: (url: string, body: any, signal?: AbortSignal) => Response | Promise<Response>): { fetch: typeof fetch; calls: string[] } {
  const calls: string[] = [];
  const fake: typeof fetch = async (input, init) => {
    calls.push(String(input));
    return answer(String(input), init?.body ? JSON.parse(String(init.body)) : undefined, init?.signal ?? undefined);
  };
  return { fetch: fake, calls };
}

export function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export interface ServedGateway {
  url: string;
  apiKey: string;
  stop(): Promise<void>;
}

/**
 * `sluice serve` against the dev gateway's Postgres, with one tenant whose limits the test
 * chooses (TOML lines of `[[tenants]]`).
 */
export async function serveGateway(tenantLines: string): Promise<ServedGateway> {
  const port = await freePort();
  const apiKey = 'sluice_test_' + randomBytes(16).toString('hex');
  const hash = createHash('sha256').update(apiKey).digest('hex');
  const dir = mkdtempSync(join(tmpdir(), 'sluice-sdk-test-'));
  const config = join(dir, 'sluice.toml');
  writeFileSync(
    config,
    `[server]
listen = "127.0.0.1:${port}"
shutdown_timeout_ms = 2000

[[upstreams]]
name = "main"
url = "${gateway.databaseUrl}"
max_connections = 4

[[tenants]]
id = "test"
upstream = "main"
api_keys = ["sha256:${hash}"]
pool_size = 2
${tenantLines}
`,
  );
  const log = openSync(join(dir, 'gateway.log'), 'w');
  const child = spawn(required('SLUICE_BIN'), ['serve', '--config', config], { stdio: ['ignore', log, log] });
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`sluice serve exited with ${child.exitCode}; see ${join(dir, 'gateway.log')}`);
    try {
      if ((await fetch(url + '/healthz')).ok) {
        return { url, apiKey, stop: () => stop().then(() => rmSync(dir, { recursive: true, force: true })) };
      }
    } catch {}
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`sluice serve did not answer /healthz within 30 s; see ${join(dir, 'gateway.log')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
