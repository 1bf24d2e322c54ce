/**
 * Imports flow down the pipeline (test/helpers/layers.ts has the table and
 * the check): no module imports a layer above its own, and there is no
 * circle of imports, between folders or between files.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { LAYERS, importsOf, layerProblems } from '../helpers/layers.js';

/** Every .ts source of src/, keyed by its path relative to src/. */
function sources(): Map<string, string> {
  const src = projectPath('src');
  return new Map(
    readdirSync(src, { withFileTypes: true, recursive: true })
      .filter((e) => e.isFile() && e.name.endsWith('.ts'))
      .map((e) => {
        const path = join(e.parentPath, e.name);
        return [relative(src, path), readFileSync(path, 'utf8')] as const;
      }),
  );
}

t.test('src/ imports flow down the layers, with no circle', async (t) => {
  const files = sources();
  t.ok(files.size > 200, `${files.size} sources read`);
  const folders = new Set([...files.keys()].map((f) => f.split('/')[0]!));
  const named = new Set(LAYERS.flatMap((l) => l.units.map((u) => u.split('/')[0]!)));
  t.same(
    [...folders].filter((f) => !named.has(f)),
    [],
    'every folder and top-level file of src/ has a layer',
  );
  t.same(layerProblems(files), [], 'move what the lower module needs down (a type, a helper), or inject it from above');
});

t.test('every kind of import is read, type-only ones too', async (t) => {
  const text = [
    "import { a } from './a.js';",
    "import type { B } from '../b/b.js';",
    "export { c } from './c.js';",
    "export type { D } from './d.js';",
    "export * from './e.js';",
    "const f = await import('./f.js');",
    "import fs from 'node:fs';",
    "import ts from 'typescript';",
  ].join('\n');
  t.same(
    importsOf('x/m.ts', text).map((i) => i.target),
    ['x/a.ts', 'b/b.ts', 'x/c.ts', 'x/d.ts', 'x/e.ts', 'x/f.ts'],
  );
});

const LOW_HIGH = [
  { units: ['low'], why: '' },
  { units: ['mid', 'peer'], why: '' },
  { units: ['high'], why: '' },
];

t.test('the check catches a planted upward import, naming file and import', async (t) => {
  const files = new Map([
    ['low/a.ts', 'export const a = 1;'],
    ['mid/b.ts', "import { a } from '../low/a.js';\nexport const b = a;"],
    ['high/c.ts', "import { b } from '../mid/b.js';\nexport const c = b;"],
    ['peer/p.ts', ''],
  ]);
  t.same(layerProblems(files, LOW_HIGH), [], 'downward imports pass');
  files.set('low/a.ts', "import type { c } from '../high/c.js';\nexport const a = 1;");
  t.same(layerProblems(files, LOW_HIGH), [
    "src/low/a.ts imports '../high/c.js': low (layer 0) may not import high (layer 2, above it)",
    "a circle between high, low, mid: src/low/a.ts imports '../high/c.js'",
    'a circle between files: src/high/c.ts, src/low/a.ts, src/mid/b.ts',
  ]);
  files.set('low/a.ts', "export const a = async () => import('../mid/b.js');");
  t.match(
    layerProblems(files, LOW_HIGH)[0],
    /^src\/low\/a\.ts imports '\.\.\/mid\/b\.js': low \(layer 0\) may not import mid/,
    'a dynamic import counts',
  );
});

t.test('the check catches a planted circle between same-layer folders and between files of one folder', async (t) => {
  const files = new Map([
    ['mid/b.ts', "import { p } from '../peer/p.js';\nexport const b = p;"],
    ['peer/p.ts', 'export const p = 1;'],
    ['high/c.ts', "import { d } from './d.js';\nexport const c = d;"],
    ['high/d.ts', 'export const d = 1;'],
    ['low/a.ts', ''],
  ]);
  t.same(layerProblems(files, LOW_HIGH), [], 'a same-layer import one way passes');
  files.set('peer/p.ts', "import type { b } from '../mid/b.js';\nexport const p = 1;");
  files.set('high/d.ts', "import { c } from './c.js';\nexport const d = () => c;");
  t.same(layerProblems(files, LOW_HIGH), [
    "a circle between mid, peer: src/mid/b.ts imports '../peer/p.js'; src/peer/p.ts imports '../mid/b.js'",
    'a circle between files: src/high/c.ts, src/high/d.ts',
    'a circle between files: src/mid/b.ts, src/peer/p.ts',
  ]);
});

t.test('the check names a file in no layer, a layer with no source and an import of no file', async (t) => {
  const files = new Map([
    ['low/a.ts', "import { x } from './gone.js';"],
    ['stray/s.ts', ''],
    ['mid/b.ts', ''],
    ['peer/p.ts', ''],
  ]);
  t.same(layerProblems(files, LOW_HIGH), [
    'the layer table names high, but src/high holds no source',
    "src/low/a.ts imports './gone.js', which is no source file (src/low/gone.ts)",
    'src/stray/s.ts is in no layer: add its folder to LAYERS in test/helpers/layers.ts',
  ]);
});
