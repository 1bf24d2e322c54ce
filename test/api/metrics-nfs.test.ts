/**
 * /metrics over real traffic: the `web` guest backed up into a real
 * repository, published, exported over NFS in this process (ephemeral ports,
 * no portmapper), read and written by Debian's libnfs clients; the API's
 * /metrics, scraped with a viewer token, then shows the NFS ops and bytes and
 * the chunk cache hits that traffic caused.
 */
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { startPublication } from '../../src/publish/publish.js';
import { startNfsExport } from '../../src/nfs/export.js';
import { requireTool, run } from '../nfs/fixtures/harness.js';
import { backedUpGuest, sha } from '../nfs/fixtures/published-guest.js';
import { testApi } from '../helpers/api.js';

/** Every sample of a metrics text, by series (name plus labels). */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

t.test('NFS reads and writes of a publication show in /metrics', async (t) => {
  for (const tool of ['nfs-cat', 'nfs-cp']) requireTool(tool);
  const g = await backedUpGuest('web');
  t.teardown(g.cleanup);
  const api = await testApi({ home: g.dir, env: { RESTORELAB_STATE_DIR: g.stateDir } });
  t.teardown(api.close);
  const scrape = async (): Promise<Map<string, number>> => {
    const res = await request(api.app).get('/metrics').set('authorization', api.auth.viewer).expect(200);
    t.match(res.headers['content-type'], /^text\/plain/);
    return samples(res.text);
  };
  const before = await scrape();
  const at = (m: Map<string, number>, series: string): number => m.get(series) ?? 0;

  const pub = await startPublication({ repo: g.repo.path, point: g.point, stateDir: g.stateDir }, { repository: g.repo });
  t.teardown(() => pub.close({ discard: true }));
  const nfs = await startNfsExport({
    datastore: pub.datastore,
    stateDir: g.stateDir,
    port: 0,
    mountPort: 0,
    portmapPort: null,
    listen: '127.0.0.1',
  });
  t.teardown(() => nfs.stop());

  const image = fs.readFileSync(g.image);
  const cat = await run('nfs-cat', [nfs.url(pub.name, 'root.raw')], undefined, 120_000);
  t.equal(cat.code, 0, cat.stderr);
  t.equal(sha(cat.stdout), sha(image), 'the disk read over NFS is the backed-up image');
  const scratch = crypto.randomBytes(200_000);
  fs.writeFileSync(path.join(g.dir, 'vmware.log'), scratch);
  const put = await run('nfs-cp', [path.join(g.dir, 'vmware.log'), nfs.url(pub.name, 'vmware.log')]);
  t.equal(put.code, 0, put.stderr);

  const after = await scrape();
  const delta = (series: string): number => at(after, series) - at(before, series);
  t.ok(delta('restorelab_nfs_ops_total{op="READ"}') > 0, 'NFS READ ops are counted');
  t.ok(delta('restorelab_nfs_ops_total{op="LOOKUP"}') > 0, 'NFS LOOKUP ops are counted');
  t.ok(delta('restorelab_nfs_ops_total{op="WRITE"}') > 0, 'NFS WRITE ops are counted');
  t.ok(delta('restorelab_nfs_bytes_total{direction="read"}') >= image.length, `at least the disk's ${image.length} bytes were sent`);
  t.ok(delta('restorelab_nfs_bytes_total{direction="write"}') >= scratch.length, 'the written bytes are counted');
  t.ok(delta('restorelab_chunk_cache_hits_total') > 0, 'NFS reads smaller than a chunk hit the chunk cache');
  t.ok(delta('restorelab_chunk_cache_misses_total') > 0, 'each chunk was decoded once');
  const ratio = at(after, 'restorelab_chunk_cache_hit_ratio');
  t.ok(ratio > 0 && ratio < 1, `hit ratio ${ratio} is between 0 and 1`);
  t.equal(delta('restorelab_fuse_bytes_total{direction="read"}'), 0, 'nothing went through FUSE');
  t.equal(at(after, 'restorelab_publications'), 1, 'the running publication is counted');
  t.ok(
    delta('restorelab_nfs_bytes_total{direction="write"}') >= nfs.metrics.bytesWritten,
    "the process-wide count covers the export's own",
  );
});
