// The newcomer's path, end to end: start `sluice dev` as a user would, take the `export` lines it
// prints, and run every example of this package's README as written (TypeScript stripped by
// esbuild) against it. A block marked ```ts no-run is a fragment that needs files of the user's
// (a migrations folder, a generated Prisma client); the tests of those adapters cover it.
// Names an example uses but leaves to the reader — `sql`, `url`, `apiKey`, `createClient` — come
// from a prelude, built from the export lines.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { transform } from 'esbuild';

interface Example {
  heading: string;
  code: string;
}

function examples(): Example[] {
  const readme = readFileSync('README.md', 'utf8');
  const found: Example[] = [];
  let heading = '';
  const fence = /^(#+ .*)$|^( *)```ts([^\n]*)\n([\s\S]*?)\n\2```/gm;
  for (let m; (m = fence.exec(readme)); ) {
    if (m[1]) heading = m[1].replace(/^#+ /, '');
    else if (!m[3].includes('no-run')) found.push({ heading, code: m[4].replace(new RegExp(`^${m[2]}`, 'gm'), '') });
  }
  return found;
}

function prelude(code: string): string {
  const lines: string[] = [];
  const declares = (name: string) => new RegExp(`\\b(const|let|var) ${name}\\b|import [^;]*\\b${name}\\b`).test(code);
  const uses = (name: string) => new RegExp(`\\b${name}\\b`).test(code);
  if (!declares('createClient') && (uses('createClient') || (uses('sql') && !declares('sql')))) lines.push("import { createClient } from '@sluice/client';");
  if (uses('url') && !declares('url')) lines.push('const url = process.env.SLUICE_URL!;');
  if (uses('apiKey') && !declares('apiKey')) lines.push('const apiKey = process.env.SLUICE_API_KEY!;');
  if (uses('sql') && !declares('sql')) lines.push('const sql = createClient({ url: process.env.SLUICE_URL!, apiKey: process.env.SLUICE_API_KEY! });');
  return lines.join('\n') + '\n';
}

describe('README examples against `sluice dev`', () => {
  let dev: ReturnType<typeof spawn>;
  const exported: Record<string, string> = {};

  before(async () => {
    dev = spawn(process.env.SLUICE_BIN!, ['dev', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise<void>((done, fail) => {
      const timer = setTimeout(() => fail(new Error('`sluice dev` printed no export lines within 120 s')), 120_000);
      createInterface({ input: dev.stdout! }).on('line', (line) => {
        const m = /^\s*export (SLUICE_[A-Z_]+)=(\S+)$/.exec(line);
        if (m) exported[m[1]] = m[2];
        if (exported.SLUICE_URL && exported.SLUICE_API_KEY) {
          clearTimeout(timer);
          done();
        }
      });
      dev.once('exit', (code) => fail(new Error(`sluice dev exited with ${code}`)));
    });
    Object.assign(process.env, exported);
  });
  after(() => {
    dev?.kill('SIGTERM');
  });

  test('sluice dev prints the export lines, with the one key variable name', () => {
    assert.match(exported.SLUICE_URL, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.match(exported.SLUICE_API_KEY, /^\S{20,}$/);
  });

  const list = examples();
  test('the README has examples to run', () => assert.ok(list.length >= 15, `${list.length} examples`));
  mkdirSync('.test-build/readme', { recursive: true });
  list.forEach(({ heading, code }, i) => {
    test(`example ${i + 1} (${heading}) runs as written`, async () => {
      const { code: js } = await transform(prelude(code) + code, { loader: 'ts', format: 'esm', target: 'es2022' });
      // Inside the package, so '@sluice/client' resolves to it (a self-reference).
      const file = resolve(`.test-build/readme/example-${i + 1}.mjs`);
      writeFileSync(file, js);
      const module = await import(pathToFileURL(file).href);
      // The handlers the platform examples export, called as their platform would.
      if (module.GET) {
        const response: Response = await module.GET(new Request('http://localhost/api/users/1'), { params: Promise.resolve({ id: '1' }) });
        assert.equal(response.status, 200);
        assert.equal((await response.json()).name, 'ada');
      }
      if (module.handler) {
        const result = await module.handler({ pathParameters: { id: '1' } });
        assert.equal(result.statusCode, 200);
      }
      if (module.default?.fetch) {
        const response: Response = await module.default.fetch(new Request('http://localhost/?name=grace'), exported);
        assert.deepEqual(await response.json(), [{ id: 2 }]);
      }
    });
  });
});
