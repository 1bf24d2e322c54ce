// The one key-file resolver (src/config/key-file.ts): --key-file, then
// RESTORELAB_KEY_FILE, then repositoryKeyFile of the config file; paths come
// out absolute so a child process in another directory finds the same file.
// The CLI processes that use it are tested in test/cli-repo/encrypted-keys.test.ts.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { loadConfig } from '../../src/config/config.js';
import { keyFileOption, resolveKeyFile } from '../../src/config/key-file.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-keyfile-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const cfgFile = join(dir, 'config.json');
writeFileSync(cfgFile, JSON.stringify({ repositoryKeyFile: 'from-config.key' }));

t.test('flag, then environment, then config file', async (t) => {
  const fromFile = loadConfig({ file: cfgFile, env: { RESTORELAB_HOME: dir } });
  const fromEnv = loadConfig({ file: cfgFile, env: { RESTORELAB_HOME: dir, RESTORELAB_KEY_FILE: join(dir, 'from-env.key') } });
  t.equal(resolveKeyFile(undefined, fromFile), join(dir, 'from-config.key'), 'the config file, relative to RESTORELAB_HOME');
  t.equal(resolveKeyFile(undefined, fromEnv), join(dir, 'from-env.key'), 'the environment overrides the config file');
  t.equal(resolveKeyFile(join(dir, 'flag.key'), fromEnv), join(dir, 'flag.key'), 'the flag overrides both');
  t.equal(resolveKeyFile('rel.key', fromEnv), resolve('rel.key'), 'a relative flag is made absolute');
  t.equal(resolveKeyFile('', fromFile), join(dir, 'from-config.key'), 'an empty flag counts as absent');
  t.equal(resolveKeyFile(undefined, loadConfig({ env: { RESTORELAB_HOME: dir } })), undefined, 'none anywhere: none');
  t.same(keyFileOption(undefined, loadConfig({ env: { RESTORELAB_HOME: dir } })), {}, 'nothing to spread');
  t.same(keyFileOption(join(dir, 'k'), fromFile), { keyFile: join(dir, 'k') });
});
