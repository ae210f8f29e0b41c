// The core entry's size as a user's bundler ships it: dist/esm/index.js with its imports,
// bundled, minified and gzipped. Over budget fails the build.

import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

export const BUDGET_BYTES = 6000;

export async function checkSize() {
  const entry = fileURLToPath(new URL('../dist/esm/index.js', import.meta.url));
  const result = await build({ entryPoints: [entry], bundle: true, minify: true, format: 'esm', platform: 'neutral', write: false });
  const minified = result.outputFiles[0].contents;
  const gzipped = gzipSync(minified, { level: 9 }).length;
  const ok = gzipped <= BUDGET_BYTES;
  console.log(`core entry: ${minified.length} B minified, ${gzipped} B min+gzip (budget ${BUDGET_BYTES} B)${ok ? '' : ' — OVER BUDGET'}`);
  return ok;
}

if (process.argv[1] === fileURLToPath(import.meta.url) && !(await checkSize())) process.exit(1);
