#!/usr/bin/env node
// Entry point: the compiled CLI lives in dist/ (built by `npm run build`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write('restorelab is not built yet: run `npm run build` (or scripts/setup) in the checkout.\n');
  process.exit(4);
}
const { run } = await import(main.href);
process.exitCode = await run(process.argv);
