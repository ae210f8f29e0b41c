// What the SDK's and the Neon-compatibility tests' runners (sdk/js/scripts/test.mjs,
// sdk/compat/scripts/test.mjs) share: finding the gateway binary, starting `sluice dev --json`
// (a gateway and a throwaway Postgres) and stopping it. Plain Node.js, no dependencies: the two
// runners belong to separate npm packages and import this file by its path.

import { spawn } from 'node:child_process';
import { accessSync, constants, openSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';

/** The gateway binary: $SLUICE_BIN, else the repository's debug build (from an sdk/* folder). Exits if it is missing. */
export function gatewayBinary() {
  const bin = resolve(process.env.SLUICE_BIN ?? '../../target/debug/sluice');
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    console.error(`The sluice gateway binary is missing: ${bin}\nBuild it with \`cargo build\` at the repository root, or point SLUICE_BIN at one.`);
    process.exit(1);
  }
  return bin;
}

/**
 * Starts `bin dev --json` on a free port, its stderr in `log`; resolves to `{ dev, stop }`: `dev`
 * is its JSON line ({url, apiKey, adminKey, databaseUrl, caFile}), `stop()` stops it (SIGTERM,
 * SIGKILL after 20 s). Exits if it prints nothing within 120 s or exits first. Ctrl-C stops it.
 */
export async function startDevGateway(bin, log) {
  const gateway = spawn(bin, ['dev', '--listen', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'pipe', openSync(log, 'w')] });
  const signalStop = () => gateway.exitCode === null && gateway.kill('SIGTERM');
  process.on('SIGINT', () => (signalStop(), process.exit(130)));
  const dev = await new Promise((resolveDev, reject) => {
    const timer = setTimeout(() => reject(new Error('`sluice dev` printed nothing within 120 s')), 120_000);
    createInterface({ input: gateway.stdout }).once('line', (line) => (clearTimeout(timer), resolveDev(JSON.parse(line))));
    gateway.once('exit', (code) => reject(new Error(`\`sluice dev\` exited with ${code}; see ${log}`)));
  }).catch((error) => {
    console.error(error.message);
    signalStop();
    process.exit(1);
  });
  console.log(`gateway ${dev.url} (log: ${log})`);
  const stop = async () => {
    signalStop();
    const stopped = await Promise.race([
      new Promise((r) => (gateway.exitCode !== null ? r(true) : gateway.once('exit', () => r(true)))),
      new Promise((r) => setTimeout(() => r(false), 20_000)),
    ]);
    if (!stopped) gateway.kill('SIGKILL');
  };
  return { dev, stop };
}
