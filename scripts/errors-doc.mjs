#!/usr/bin/env node
// Writes docs/errors.md from the error registry (src/errors/registry.ts), read from the build in dist/.
// Run as `npm run docs:errors` (which builds first).
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { renderErrorsDoc } = await import(join(root, 'dist', 'src', 'errors', 'doc.js'));
writeFileSync(join(root, 'docs', 'errors.md'), renderErrorsDoc());
console.log('wrote docs/errors.md');
