/**
 * JSON Schema validation for every JSON a user hands us: config files, VM
 * definitions, labs, jobs and API bodies. Schemas live in config/schemas/ so
 * the same files document the formats and (later) generate the OpenAPI spec.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import { badInput } from '../errors.js';
import { projectPath } from '../paths.js';

// ajv-formats is CommonJS; under NodeNext its default export arrives wrapped.
type AddFormats = (ajv: Ajv2020) => Ajv2020;
const addFormats = ((addFormatsModule as unknown as { default?: AddFormats }).default ?? addFormatsModule) as unknown as AddFormats;

export const SCHEMA_DIR = projectPath('config', 'schemas');

let ajv: Ajv2020 | undefined;

/** The schemas of config/schemas, by file name. */
export function schemaFiles(): Map<string, Record<string, unknown>> {
  const out = new Map<string, Record<string, unknown>>();
  for (const file of readdirSync(SCHEMA_DIR)
    .filter((f) => f.endsWith('.schema.json'))
    .sort()) {
    out.set(file, JSON.parse(readFileSync(join(SCHEMA_DIR, file), 'utf8')) as Record<string, unknown>);
  }
  return out;
}

/**
 * An ajv holding every schema. `coerceTypes` is for query strings, whose
 * values all arrive as text; bodies are validated without it.
 */
export function createAjv(opts: { coerceTypes?: boolean } = {}): Ajv2020 {
  // validateSchema off: checking our own shipped schemas against the meta-schema cost ~150 ms on every
  // CLI call; test/foundation/schemas.test.ts checks them once instead.
  const a = new Ajv2020({
    allErrors: true,
    strict: true,
    useDefaults: true,
    coerceTypes: opts.coerceTypes ?? false,
    validateSchema: false,
  });
  addFormats(a);
  for (const [file, schema] of schemaFiles()) a.addSchema(schema, (schema.$id as string | undefined) ?? file);
  return a;
}

function instance(): Ajv2020 {
  return (ajv ??= createAjv());
}

/** The compiled validator for a schema file name such as `vm.schema.json`. */
export function validatorFor(schemaId: string): ValidateFunction {
  const v = instance().getSchema(schemaId);
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
