// The package as published: both module systems load every entry point (sharing one copy of
// the core), the built code imports nothing from Node, and the core stays within its budget.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, test } from 'node:test';
import * as core from '@sluice/client';
import * as drizzleEntry from '@sluice/client/drizzle';
import * as kyselyEntry from '@sluice/client/kysely';

const dist = new URL('../../dist/', import.meta.url);

describe('package', () => {
  test('ESM: every entry point loads', () => {
    assert.equal(typeof core.createClient, 'function');
    assert.equal(typeof core.SluiceError, 'function');
    assert.equal(typeof drizzleEntry.drizzle, 'function');
    assert.equal(typeof drizzleEntry.drizzleCallback, 'function');
    assert.equal(typeof kyselyEntry.SluiceDialect, 'function');
  });

  test('CommonJS: every entry point loads through require', () => {
    const require = createRequire(import.meta.url);
    const cjs = require('@sluice/client');
    assert.equal(typeof cjs.createClient, 'function');
    assert.equal(typeof require('@sluice/client/drizzle').drizzle, 'function');
    assert.equal(typeof require('@sluice/client/drizzle/migrator').migrate, 'function');
    assert.equal(typeof require('@sluice/client/drizzle-proxy').drizzle, 'function');
    assert.equal(typeof require('@sluice/client/prisma').PrismaSluice, 'function');
    assert.equal(typeof require('@sluice/client/kysely').SluiceDialect, 'function');
    assert.throws(() => cjs.createClient({}), /`url` is missing/);
    assert.equal(require('@sluice/client/package.json').sideEffects, false);
  });

  test('the adapters use the core entry, not a copy of it', () => {
    for (const format of ['esm', 'cjs']) {
      for (const entry of ['drizzle.js', 'drizzle-proxy.js', 'drizzle-migrator.js', 'kysely.js', 'prisma.js']) {
        const code = readFileSync(new URL(`${format}/${entry}`, dist), 'utf8');
        assert.doesNotMatch(code, /class SluiceError|function makeSql/, `${format}/${entry} bundles the core`);
      }
    }
  });

  test('no Node built-ins: the same code runs on Workers, Deno, Bun and edge runtimes', () => {
    // drizzle-migrator.js reads migration files, through drizzle-orm's reader: Node only, by nature.
    const builtins = /(?:from\s*|require\(\s*|import\(\s*)["'](?:node:|fs|path|http|https|net|tls|crypto|stream|buffer|events|os|url|util|zlib|child_process)["'/]/;
    for (const format of ['esm', 'cjs']) {
      for (const file of readdirSync(new URL(format + '/', dist)).filter((f) => f.endsWith('.js') && f !== 'drizzle-migrator.js')) {
        assert.doesNotMatch(readFileSync(new URL(`${format}/${file}`, dist), 'utf8'), builtins, `${format}/${file}`);
      }
    }
  });

  test('exports list types first in every condition', () => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', dist), 'utf8'));
    for (const [entry, conditions] of Object.entries<Record<string, Record<string, string>>>(pkg.exports)) {
      if (typeof conditions === 'string') continue;
      for (const [condition, targets] of Object.entries(conditions)) {
        assert.equal(Object.keys(targets)[0], 'types', `${entry} → ${condition}`);
      }
    }
    assert.deepEqual(pkg.dependencies ?? {}, {});
  });

  test('the core entry is within its size budget', () => {
    const output = execFileSync(process.execPath, [new URL('../scripts/size.mjs', dist).pathname], { encoding: 'utf8' });
    assert.match(output, /B min\+gzip/);
  });
});
