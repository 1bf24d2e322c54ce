/**
 * docs/architecture.md names only types that exist: every PascalCase name it
 * writes in backticks is exported from some module under src/. A type that is
 * renamed or removed then fails here until the doc follows.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectPath } from '../../src/paths.js';

/** A code span that is one PascalCase identifier (`ChunkStore`), not a constant (`NO_HEARTBEAT`) or a command. */
const TYPE_NAME = /^[A-Z][a-z][A-Za-z0-9]*$/;

function typeNamesIn(markdown: string): string[] {
  const spans = [...markdown.matchAll(/`([^`\n]+)`/g)].map((m) => m[1] ?? '');
  return [...new Set(spans.filter((s) => TYPE_NAME.test(s)))].sort();
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

/** Names exported by a declaration (`export interface X`, `export class X`, ...) or an export list (`export { X }`, `export type { X }`). */
function exportedNames(source: string): Set<string> {
  const out = new Set<string>();
  for (const m of source.matchAll(
    /export\s+(?:declare\s+)?(?:abstract\s+)?(?:interface|class|type|const|let|function\*?|enum|async\s+function)\s+([A-Za-z_$][\w$]*)/g,
  ))
    out.add(m[1] ?? '');
  for (const m of source.matchAll(/export\s+(?:type\s+)?\{([^}]*)\}/g)) {
    for (const part of (m[1] ?? '').split(',')) {
      const name = part
        .trim()
        .replace(/^type\s+/, '')
        .split(/\s+as\s+/)
        .pop()
        ?.trim();
      if (name) out.add(name);
    }
  }
  return out;
}

function missingTypes(markdown: string, exported: Set<string>): string[] {
  return typeNamesIn(markdown).filter((n) => !exported.has(n));
}

const exported = new Set(sourceFiles(projectPath('src')).flatMap((f) => [...exportedNames(readFileSync(f, 'utf8'))]));

t.test('every type docs/architecture.md names in backticks is exported from src/', async (t) => {
  const doc = readFileSync(projectPath('docs', 'architecture.md'), 'utf8');
  const names = typeNamesIn(doc);
  t.ok(names.length >= 30, `the doc names ${names.length} types`);
  for (const layerType of [
    'ChunkStore',
    'Repository',
    'DiskSource',
    'PublishedDisk',
    'Datastore',
    'Hypervisor',
    'Domain',
    'LabDefinition',
    'TestResult',
  ]) {
    t.ok(names.includes(layerType), `the doc names ${layerType}`);
  }
  t.same(missingTypes(doc, exported), [], 'names that no module under src/ exports');
});

t.test('the check finds a name that is not exported, and every form of export', async (t) => {
  t.same(missingTypes('a `VirtualLab` and a `ChunkStore`, a `NO_HEARTBEAT`, `restorelab verify`', exported), ['VirtualLab']);
  const names = exportedNames(
    [
      'export interface A {}',
      'export abstract class B {}',
      'export type C = 1;',
      'export const D = 1;',
      'export async function E() {}',
      "export { F, G as H } from './x.js';",
      "export type { I } from './y.js';",
    ].join('\n'),
  );
  t.same([...names].sort(), ['A', 'B', 'C', 'D', 'E', 'F', 'H', 'I']);
});
