/**
 * Naming a repository (src/repo/open.ts): an s3:// spec keeps its form
 * wherever a repository is named (--repo, RESTORELAB_REPO, the config) and
 * is never resolved as a path under the working directory or RESTORELAB_HOME.
 */
import t from 'tap';
import { resolve } from 'node:path';
import { loadConfig } from '../../src/config/config.js';
import { isObjectStorage, resolveRepository } from '../../src/repo/open.js';

t.test('resolveRepository: s3:// URLs in one canonical form, directories made absolute', async (t) => {
  t.equal(resolveRepository('s3://backups/restorelab'), 's3://backups/restorelab/');
  t.equal(resolveRepository('s3://backups/restorelab/'), 's3://backups/restorelab/', 'a trailing slash names the same repository');
  t.equal(resolveRepository('s3://backups'), 's3://backups/', 'the whole bucket');
  t.equal(resolveRepository('var/repo'), resolve('var/repo'));
  t.equal(resolveRepository('./s3:/x'), resolve('s3:/x'), 'only the s3:// scheme is object storage');
  t.ok(isObjectStorage('s3://b-1/x'));
  t.notOk(isObjectStorage('/srv/s3://x'));
  t.throws(() => resolveRepository('s3://Bad_Bucket/x'), { code: 'BAD_S3_URL' });
  t.throws(() => resolveRepository('s3://bucket/a/../b'), { code: 'BAD_S3_URL' });
});

t.test('the config keeps an s3:// repository as it is; a relative directory is resolved against RESTORELAB_HOME', async (t) => {
  const s3 = loadConfig({ env: { RESTORELAB_HOME: '/srv/rl', RESTORELAB_REPO: 's3://backups/prod' } });
  t.equal(s3.repository, 's3://backups/prod');
  const local = loadConfig({ env: { RESTORELAB_HOME: '/srv/rl', RESTORELAB_REPO: 'var/repo' } });
  t.equal(local.repository, '/srv/rl/var/repo');
  t.equal(s3.limits.objectCacheMiB, 2048, 'the on-disk chunk cache bound has its default');
});
