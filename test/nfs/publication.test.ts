/**
 * NFS over a real publication: the `web` guest backed up into a real
 * repository, published (overlay over the chunk store), exported with
 * NfsExport on ephemeral ports, and used by Debian's libnfs clients.
 */
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startPublication } from '../../src/publish/publish.js';
import { startNfsExport, loadServerId } from '../../src/nfs/export.js';
import { requireTool, run } from './fixtures/harness.js';
import { backedUpGuest, chunkFingerprint, sha } from './fixtures/published-guest.js';

t.test('libnfs clients read, write and list a real publication', async (t) => {
  for (const tool of ['nfs-ls', 'nfs-cat', 'nfs-cp']) requireTool(tool);
  const g = await backedUpGuest('web');
  t.teardown(g.cleanup);
  const { dir, stateDir, repo, image } = g;
  const before = chunkFingerprint(repo.path);

  const pub = await startPublication({ repo: repo.path, point: g.point, stateDir }, { repository: repo });
  t.teardown(() => pub.close({ discard: true }));
  const nfs = await startNfsExport({ datastore: pub.datastore, stateDir, port: 0, mountPort: 0, portmapPort: null, listen: '127.0.0.1' });
  t.teardown(() => nfs.stop());
  t.equal(loadServerId(stateDir), loadServerId(stateDir), 'the server id is persisted, not regenerated');

  const root = await run('nfs-ls', [nfs.url().replace('/?', '?')]);
  t.equal(root.code, 0, root.stderr);
  t.match(root.stdout.toString(), new RegExp(pub.name), 'the publication is listed at the export root');
  const ls = await run('nfs-ls', [nfs.url(pub.name)]);
  t.equal(ls.code, 0, ls.stderr);
  for (const f of ['root.raw', 'root.vmdk', 'root-flat.vmdk', 'web.json']) t.match(ls.stdout.toString(), f, `${f} is listed`);

  const original = sha(fs.readFileSync(image));
  const cat = await run('nfs-cat', [nfs.url(pub.name, 'root.raw')], undefined, 120_000);
  t.equal(cat.code, 0, cat.stderr);
  t.equal(sha(cat.stdout), original, 'nfs-cat of root.raw matches the backed-up image');
  const copy = path.join(dir, 'copy.raw');
  const cp = await run('nfs-cp', [nfs.url(pub.name, 'root-flat.vmdk'), copy], undefined, 120_000);
  t.equal(cp.code, 0, cp.stderr);
  t.equal(sha(fs.readFileSync(copy)), original, 'nfs-cp of root-flat.vmdk matches too');

  // A hypervisor's scratch file: created, written and read back.
  const scratch = crypto.randomBytes(300_000);
  fs.writeFileSync(path.join(dir, 'vmware.log'), scratch);
  const put = await run('nfs-cp', [path.join(dir, 'vmware.log'), nfs.url(pub.name, 'vmware.log')]);
  t.equal(put.code, 0, put.stderr);
  const back = await run('nfs-cat', [nfs.url(pub.name, 'vmware.log')]);
  t.equal(sha(back.stdout), sha(scratch), 'a scratch file written over NFS reads back');

  t.equal(chunkFingerprint(repo.path), before, 'every chunk of the repository is byte-identical');
  t.ok(nfs.metrics.bytesWritten >= scratch.length, 'the server counted the bytes written');
});
