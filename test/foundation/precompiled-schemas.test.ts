/**
 * The build's standalone validators (src/schema/validate.ts) judge exactly as
 * ajv compiling the schemas at run time: same verdict, same errors, same
 * defaults filled in, over every shipped document of each kind and broken
 * variants of it (a required field missing, an unknown field, each field of
 * the wrong type). A file built from other schemas is not used.
 */
import t from 'tap';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createAjv, loadPrecompiled, standaloneValidators } from '../../src/schema/validate.js';
import { projectPath } from '../../src/paths.js';

// Next to the build's file, so its require() of ajv's runtime resolves from the checkout's node_modules.
const built = projectPath('dist', 'test', 'foundation', `validators-${randomBytes(4).toString('hex')}.cjs`);
const stale = built.replace('.cjs', '-stale.cjs');
const text = standaloneValidators();
writeFileSync(built, text);
writeFileSync(stale, text.replace(/exports\.schemaDigest = "[0-9a-f]+"/, 'exports.schemaDigest = "0"'));
t.teardown(() => {
  rmSync(built, { force: true });
  rmSync(stale, { force: true });
});

type Json = Record<string, unknown>;

/** The shipped documents of each schema. */
function samples(): [string, Json][] {
  const out: [string, Json][] = [['config.schema.json', JSON.parse(readFileSync(projectPath('config', 'default.json'), 'utf8')) as Json]];
  const kinds: [string, string][] = [
    ['vms', 'vm.schema.json'],
    ['labs', 'lab.schema.json'],
    ['jobs', 'job.schema.json'],
    ['groups', 'group.schema.json'],
    ['guests', 'guest.schema.json'],
    ['backup-jobs', 'backup-job.schema.json'],
  ];
  for (const [dir, schema] of kinds)
    for (const f of readdirSync(projectPath('lab-templates', dir)).filter((n) => n.endsWith('.json')))
      out.push([schema, JSON.parse(readFileSync(projectPath('lab-templates', dir, f), 'utf8')) as Json]);
  return out;
}

/** The document and broken variants of it. */
function variants(doc: Json): Json[] {
  const out: Json[] = [doc, {}, { ...doc, zzUnknownField: 1 }];
  for (const [k, v] of Object.entries(doc)) {
    const rest = { ...doc };
    delete rest[k];
    out.push(rest, { ...doc, [k]: typeof v === 'string' ? 42 : 'not-that-type' });
  }
  return out;
}

t.test('standalone validators and ajv agree on every shipped document and its broken variants', async (t) => {
  const standalone = loadPrecompiled(built);
  if (!standalone) throw new Error('the freshly built validators were not accepted');
  const ajv = createAjv();
  const all = samples();
  t.ok(all.length >= 15, `${all.length} shipped documents`);
  let checked = 0;
  let invalid = 0;
  for (const [schema, doc] of all) {
    for (const v of variants(doc)) {
      const a = structuredClone(v);
      const b = structuredClone(v);
      const byAjv = ajv.getSchema(schema);
      const byStandalone = standalone[schema];
      if (!byAjv || !byStandalone) throw new Error(`no validator for ${schema}`);
      const okA = byAjv(a);
      const okB = byStandalone(b);
      if (!okA) invalid++;
      checked++;
      if (
        okA !== okB ||
        JSON.stringify(byAjv.errors ?? null) !== JSON.stringify(byStandalone.errors ?? null) ||
        JSON.stringify(a) !== JSON.stringify(b)
      )
        t.fail(
          `${schema} on ${JSON.stringify(v).slice(0, 200)}: ajv ${okA} ${JSON.stringify(byAjv.errors)}, standalone ${okB} ${JSON.stringify(byStandalone.errors)}`,
        );
    }
  }
  t.ok(invalid > checked / 3, `broken variants were rejected (${invalid} of ${checked} documents invalid)`);
  t.pass(`${checked} documents judged alike`);
});

t.test('validators built from other schemas, or none, are not used', async (t) => {
  t.equal(loadPrecompiled(stale), null, 'a digest that is not the schemas’ refuses the file');
  t.equal(loadPrecompiled(built.replace('.cjs', '-missing.cjs')), null, 'a missing file gives ajv');
  t.ok(loadPrecompiled(built), 'a current file is used');
});
