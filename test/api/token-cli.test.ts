/** `restorelab token create|list|revoke` against a real catalog: secrets shown once, stored hashed, bad input refused. */
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cli } from './fixtures/cli.js';
import { TokenStore } from '../../src/api/tokens.js';
import { loadConfig } from '../../src/config/config.js';

t.test('create, list, revoke; bad role, bad name and unknown token are clear errors', async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'rl-token-'));
  t.teardown(() => rmSync(home, { recursive: true, force: true }));
  const env = { RESTORELAB_HOME: home };

  const badRole = await cli(['--json', 'token', 'create', 'ci', '--role', 'root'], env);
  t.equal(badRole.code, 2);
  t.match(badRole.json, { ok: false, error: { code: 'BAD_ROLE' } });
  const badName = await cli(['--json', 'token', 'create', 'has space', '--role', 'viewer'], env);
  t.equal(badName.code, 2);
  t.match(badName.json, { ok: false, error: { code: 'BAD_TOKEN_NAME' } });
  const noRole = await cli(['token', 'create', 'ci'], env);
  t.equal(noRole.code, 2, 'the role is required');
  t.match(noRole.stderr, /--role/);

  const made = await cli(['--json', 'token', 'create', 'ci', '--role', 'operator'], env);
  t.equal(made.code, 0, made.stderr);
  const token = made.json.token as string;
  t.match(token, /^rl_[a-f0-9]{12}_/);
  const store = await TokenStore.open(loadConfig({ env }).catalog);
  t.teardown(() => store.close());
  t.match(await store.check(token), { name: 'ci', role: 'operator' }, 'the printed secret authenticates');
  const catalog = loadConfig({ env }).catalog;
  // SQLite may hold the fresh row in its write-ahead log: look in both files.
  const stored = Buffer.concat([catalog, `${catalog}-wal`].filter((f) => existsSync(f)).map((f) => readFileSync(f)));
  t.ok(stored.includes(Buffer.from('operator')), 'the row is in the files searched');
  // The secret is base64url, which has '_' too: it is everything after the id.
  const secret = /^rl_[a-f0-9]{12}_(.{43})$/.exec(token)?.[1] ?? '';
  t.equal(secret.length, 43, 'a 256-bit secret');
  t.notOk(stored.includes(Buffer.from(secret)), 'the secret is not stored');

  const list = await cli(['--json', 'token', 'list'], env);
  t.equal(list.code, 0, list.stderr);
  t.same(
    (list.json.tokens as Array<{ name: string }>).map((x) => x.name),
    ['ci'],
  );
  t.notOk(list.stdout.includes(token.slice(-20)), 'list never shows a secret');

  const unknown = await cli(['--json', 'token', 'revoke', 'nobody'], env);
  t.equal(unknown.code, 5);
  t.match(unknown.json, { ok: false, error: { code: 'TOKEN_NOT_FOUND' } });
  const revoked = await cli(['--json', 'token', 'revoke', 'ci'], env);
  t.equal(revoked.code, 0, revoked.stderr);
  t.equal(await store.check(token), undefined, 'a revoked token no longer authenticates');
});
