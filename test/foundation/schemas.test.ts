/** Every shipped schema is valid JSON Schema 2020-12 and compiles in strict mode (createAjv skips this check at run time). */
import t from 'tap';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { createAjv, schemaFiles } from '../../src/schema/validate.js';

t.test('each schema in config/schemas passes the meta-schema and compiles', async (t) => {
  const files = schemaFiles();
  t.ok(files.size >= 10, `${files.size} schema files`);
  const meta = new Ajv2020({ strict: true });
  const ajv = createAjv();
  for (const [file, schema] of files) {
    t.ok(meta.validateSchema(schema), `${file}: valid against the 2020-12 meta-schema ${JSON.stringify(meta.errors ?? [])}`);
    t.doesNotThrow(() => ajv.getSchema((schema.$id as string | undefined) ?? file), `${file}: compiles in strict mode`);
  }
});

t.test('a broken schema is caught by the meta-schema check', async (t) => {
  const meta = new Ajv2020({ strict: true });
  t.notOk(meta.validateSchema({ type: 'objekt' }), 'an unknown type name fails');
  t.notOk(meta.validateSchema({ properties: { a: { minLength: -1 } } }), 'a negative minLength fails');
});
