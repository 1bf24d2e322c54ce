#!/usr/bin/env node
// Writes ajv's standalone validators for config/schemas to dist/src/schema/validators.cjs, stamped with the
// schemas' digest (src/schema/validate.ts explains why). Run after tsc: `npm run build` and scripts/test do.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const { PRECOMPILED_FILE, standaloneValidators } = await import(join(root, 'dist', 'src', 'schema', 'validate.js'));
writeFileSync(PRECOMPILED_FILE, standaloneValidators());
