/**
 * JSON Schema validation for every JSON a user hands us: config files, VM
 * definitions, labs, jobs and API bodies. Schemas live in config/schemas/ so
 * the same files document the formats and (later) generate the OpenAPI spec.
 *
 * *Precompiled validators*: the build (`npm run build`, scripts/test) writes
 * ajv's standalone code for every schema to dist/src/schema/validators.cjs
 * (scripts/compile-schemas.mjs), stamped with a digest of config/schemas.
 * Every CLI call validates the configuration, and loading ajv and compiling
 * config.schema.json cost about 130 ms of CPU per process; the standalone
 * module loads in a few. When the file is missing or its digest is not the
 * schemas' (edited since the build), validation compiles with ajv as before.
 */
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { Ajv2020, ErrorObject, ValidateFunction } from 'ajv/dist/2020.js';
import { badInput } from '../errors.js';
import { projectPath } from '../paths.js';

// ajv and ajv-formats are CommonJS, loaded on first compile: a process that finds the precompiled validators never loads them.
const load = createRequire(import.meta.url);
type AddFormats = (ajv: Ajv2020) => Ajv2020;

export const SCHEMA_DIR = projectPath('config', 'schemas');
/** The build's standalone validators (see the module comment). */
export const PRECOMPILED_FILE = projectPath('dist', 'src', 'schema', 'validators.cjs');

let ajv: Ajv2020 | undefined;

/** The schemas of config/schemas, by file name. */
export function schemaFiles(): Map<string, Record<string, unknown>> {
  const out = new Map<string, Record<string, unknown>>();
  for (const [file, text] of schemaTexts()) out.set(file, JSON.parse(text) as Record<string, unknown>);
  return out;
}

function schemaTexts(): [string, string][] {
  return readdirSync(SCHEMA_DIR)
    .filter((f) => f.endsWith('.schema.json'))
    .sort()
    .map((f) => [f, readFileSync(join(SCHEMA_DIR, f), 'utf8')]);
}

/** SHA-256 over the schema files' names and texts: what precompiled validators must have been built from. */
export function schemaDigest(): string {
  const h = createHash('sha256');
  for (const [file, text] of schemaTexts()) h.update(`${file}\0${text}\0`);
  return h.digest('hex');
}

/**
 * An ajv holding every schema. `coerceTypes` is for query strings, whose
 * values all arrive as text; bodies are validated without it.
 */
export function createAjv(opts: { coerceTypes?: boolean } = {}): Ajv2020 {
  // validateSchema off: checking our own shipped schemas against the meta-schema cost ~150 ms on every
  // CLI call; test/foundation/schemas.test.ts checks them once instead.
  return withSchemas(opts.coerceTypes ?? false);
}

function withSchemas(coerceTypes: boolean, code?: { source: true; formats: unknown }): Ajv2020 {
  const { Ajv2020: AjvClass } = load('ajv/dist/2020.js') as typeof import('ajv/dist/2020.js');
  const addFormats = load('ajv-formats') as AddFormats;
  const a = new AjvClass({
    allErrors: true,
    strict: true,
    useDefaults: true,
    coerceTypes,
    validateSchema: false,
    ...(code ? { code: code as never } : {}),
  });
  addFormats(a);
  for (const [file, schema] of schemaFiles()) a.addSchema(schema, (schema.$id as string | undefined) ?? file);
  return a;
}

function instance(): Ajv2020 {
  return (ajv ??= createAjv());
}

/**
 * The module text of standalone validators for every schema (without type
 * coercion), exported by schema id, plus `schemaDigest`: what
 * scripts/compile-schemas.mjs writes to PRECOMPILED_FILE.
 */
export function standaloneValidators(): string {
  const { _ } = load('ajv/dist/2020.js') as typeof import('ajv/dist/2020.js');
  const standaloneCode = load('ajv/dist/standalone') as (a: Ajv2020) => string;
  const a = withSchemas(false, { source: true, formats: _`require("ajv-formats/dist/formats").fullFormats` });
  return `${standaloneCode(a)}\nexports.schemaDigest = ${JSON.stringify(schemaDigest())};\n`;
}

/**
 * The standalone validators in `file` when they were built from the schemas as they are now; null when the file is
 * missing or its digest differs (validation then compiles with ajv).
 */
export function loadPrecompiled(file: string): Record<string, ValidateFunction> | null {
  let mod: Record<string, ValidateFunction> & { schemaDigest?: string };
  try {
    mod = load(file) as typeof mod;
  } catch {
    return null;
  }
  return mod.schemaDigest === schemaDigest() ? mod : null;
}

let precompiled: Record<string, ValidateFunction> | null | undefined;

/** The compiled validator for a schema file name such as `vm.schema.json`. */
export function validatorFor(schemaId: string): ValidateFunction {
  const v = (precompiled ??= loadPrecompiled(PRECOMPILED_FILE))?.[schemaId] ?? instance().getSchema(schemaId);
  if (!v) throw new Error(`unknown schema ${schemaId}`);
  return v;
}

/** Renders ajv's errors as `path: message` lines a person can act on. */
export function describeErrors(errors: ErrorObject[] | null | undefined): string[] {
  return (errors ?? []).map((e) => {
    const path = e.instancePath === '' ? '(top level)' : e.instancePath;
    if (e.keyword === 'additionalProperties') {
      return `${path}: unknown property "${String(e.params.additionalProperty)}"`;
    }
    if (e.keyword === 'enum') {
      return `${path}: must be one of ${(e.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    }
    return `${path}: ${e.message ?? 'is invalid'}`;
  });
}

/**
 * Validates `value` against a schema, or throws a bad-input error that names
 * the source, every failing path, and a one-line fix.
 */
export function assertValid<T>(schemaId: string, value: unknown, source: string): T {
  const v = validatorFor(schemaId);
  if (v(value)) return value as T;
  const lines = describeErrors(v.errors);
  throw badInput(
    'SCHEMA_INVALID',
    `${source} does not match ${schemaId}:\n  ${lines.join('\n  ')}`,
    `fix the ${lines.length === 1 ? 'field' : 'fields'} above; the format is documented in config/schemas/${schemaId}`,
  );
}

/** Reads and parses a JSON file, turning syntax errors into a clear bad-input error. */
export function readJsonFile(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw badInput(
      'FILE_UNREADABLE',
      `cannot read ${what} ${path}: ${(err as Error).message}`,
      `check that ${path} exists and is readable`,
    );
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw badInput(
      'JSON_INVALID',
      `${what} ${path} is not valid JSON: ${jsonSyntaxProblem(text, err)}`,
      'fix the JSON syntax at that spot',
    );
  }
}

/**
 * What is wrong with JSON text and where (line, column), never quoting it.
 * V8's own messages quote a stretch of the input ("Unexpected token 'r',
 * "root:$y$j9T..." is not valid JSON"), and these errors reach API clients
 * and the operation list, so a file the server was pointed at must not be
 * readable through them (docs/security.md, "API roles and the host").
 */
export function jsonSyntaxProblem(text: string, err: unknown): string {
  const msg = err instanceof Error ? err.message : '';
  const at = / in JSON at position (\d+)/.exec(msg);
  let problem: string;
  let pos: number;
  if (at && !msg.slice(0, at.index).includes('"')) {
    problem = msg.slice(0, at.index);
    pos = Number(at[1]);
  } else if (msg.startsWith('Unexpected end of JSON input')) {
    problem = 'unexpected end of input';
    pos = text.length;
  } else {
    problem = 'unexpected character';
    pos = firstBadOffset(text);
  }
  const before = text.slice(0, pos);
  const line = before.split('\n').length;
  const column = pos - before.lastIndexOf('\n');
  return `${problem} at line ${line}, column ${column}`;
}

/**
 * Where an "Unexpected token" error sits, which V8 reports only by quoting:
 * the shortest prefix that fails the same way ends just after it. Prefixes
 * before it fail only as incomplete, so the search is a bisection.
 */
function firstBadOffset(text: string): number {
  const broken = (n: number): boolean => {
    try {
      JSON.parse(text.slice(0, n));
      return false;
    } catch (e) {
      return (e as Error).message.startsWith('Unexpected token');
    }
  };
  let lo = 1;
  let hi = text.length;
  if (!broken(hi)) return 0;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (broken(mid)) hi = mid;
    else lo = mid + 1;
  }
  return lo - 1;
}

/** Reads a JSON file and validates it in one step. */
export function loadValidated<T>(schemaId: string, path: string, what: string): T {
  return assertValid<T>(schemaId, readJsonFile(path, what), `${what} ${path}`);
}
