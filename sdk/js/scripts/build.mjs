// Builds dist/esm and dist/cjs (JavaScript by esbuild, one file per module so the adapters
// share the core's classes; declarations by tsc), then enforces the core's size budget.

import { execFileSync } from 'node:child_process';
import { copyFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { checkSize } from './size.mjs';

process.chdir(fileURLToPath(new URL('..', import.meta.url)));
rmSync('dist', { recursive: true, force: true });

const entryPoints = readdirSync('src').map((file) => `src/${file}`);
for (const [format, type] of [['esm', 'module'], ['cjs', 'commonjs']]) {
  await build({ entryPoints, outdir: `dist/${format}`, format, platform: 'neutral', target: 'es2022', logLevel: 'warning' });
  // The nearest package.json tells Node, and TypeScript, which module system a .js or .d.ts uses.
  writeFileSync(`dist/${format}/package.json`, JSON.stringify({ type }) + '\n');
}

execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', '.'], { stdio: 'inherit' });
for (const file of readdirSync('dist/esm').filter((f) => f.endsWith('.d.ts'))) {
  copyFileSync(`dist/esm/${file}`, `dist/cjs/${file}`);
}

if (!(await checkSize())) process.exit(1);
