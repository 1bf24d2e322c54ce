/**
 * The Datastore contract (fixtures: datastore-suite.ts) against both
 * implementations: the in-memory one the NFS procedure tests pin bytes with,
 * and the real PublicationDatastore serving a publication of a restore point
 * the real backup engine wrote into a temporary repository.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT_ID } from '../../src/datastore/types.js';
import { PublicationDatastore } from '../../src/datastore/publication-datastore.js';
import { restorePublications, startPublication } from '../../src/publish/publish.js';
import { MemoryDatastore } from '../nfs/fixtures/memory-datastore.js';
import { wireRepository } from '../nfs/fixtures/harness.js';
import { runDatastoreSuite } from './datastore-suite.js';

runDatastoreSuite(t, {
  kind: 'memory',
  async create(_t, { readOnly }) {
    const ds = new MemoryDatastore(readOnly);
    const dir = ds.putDir(ROOT_ID, 'pub');
    const content = Buffer.from(Array.from({ length: 640 * 1024 }, (_, i) => (i * 7 + (i >> 12)) & 0xff));
    ds.putFile(dir, 'root.raw', content);
    return { datastore: ds, dir, dirName: 'pub', disk: { name: 'root.raw', content } };
  },
});

runDatastoreSuite(t, {
  kind: 'publication',
  async create(t, { readOnly }) {
    const { repository, point, image } = await wireRepository();
    const stateDir = join(mkdtempSync(join(tmpdir(), 'rl-ds-contract-')), 'state');
    t.teardown(() => rmSync(join(stateDir, '..'), { recursive: true, force: true }));
    const pub = await startPublication({ repo: repository.path, point, stateDir, readOnly }, { repository });
    let close = (): Promise<void> => pub.close({ discard: true });
    t.teardown(() => close());
    const dir = await pub.datastore.lookup(ROOT_ID, pub.name);
    return {
      datastore: pub.datastore,
      dir,
      dirName: pub.name,
      disk: { name: 'root.raw', content: readFileSync(image) },
      // A server restart: the publisher stops keeping its overlay and scratch files, the server re-attaches its record.
      async reopen() {
        await pub.close();
        const datastore = new PublicationDatastore();
        const restored = await restorePublications(stateDir, datastore, { repository });
        t.same(restored.restored, [pub.id], 'the publication is restored from its record');
        close = () => restored.close();
        return datastore;
      },
    };
  },
});
