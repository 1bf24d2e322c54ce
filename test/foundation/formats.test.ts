/**
 * The format registry: every format has a unique name, a section of
 * docs/formats.md that names its magic, and the codecs write the magic the
 * registry states (an NFS handle from HandleCodec, an overlay map from a real
 * overlay).
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { FORMATS, NFS_HANDLE_BYTES, NFS_HANDLE_MAGIC, OVERLAY_MAP_MAGIC } from '../../src/formats.js';
import { HandleCodec } from '../../src/nfs/handle.js';
import { Overlay } from '../../src/overlay/overlay.js';
import { PublishedDisk } from '../../src/disk/published-disk.js';
import { ChunkCache } from '../../src/disk/chunk-cache.js';
import { MemoryDiskSource, patternBytes } from '../publish/fixtures/memory-repository.js';

t.test('every format is named once and documented with its magic', async (t) => {
  const doc = readFileSync(projectPath('docs', 'formats.md'), 'utf8');
  const names = FORMATS.map((f) => f.name);
  t.same([...new Set(names)], names, 'names are unique');
  const headings = doc
    .split('\n')
    .filter((l) => l.startsWith('## '))
    .map((l) => l.slice(3));
  for (const f of FORMATS) {
    const heading = headings.find((h) => h.startsWith(f.name));
    t.ok(heading, `docs/formats.md has a section for ${f.name}`);
    const at = doc.indexOf(`## ${heading}`);
    const section = doc.slice(at, doc.indexOf('\n## ', at + 3) < 0 ? undefined : doc.indexOf('\n## ', at + 3));
    t.ok(section.includes(f.magic), `the ${f.name} section names its magic ${f.magic}`);
    t.match(
      doc,
      new RegExp(`\\| ${f.name} \\| ${f.version} \\| \`${f.magic}\``),
      `the registry table lists ${f.name} at version ${f.version}`,
    );
  }
});

t.test('the codecs write the registered magics', async (t) => {
  const handle = new HandleCodec(Buffer.alloc(16, 1)).encode(42);
  t.equal(handle.length, NFS_HANDLE_BYTES, 'an NFS handle has the registered length');
  t.ok(handle.subarray(0, 4).equals(NFS_HANDLE_MAGIC), 'and starts with the registered magic');

  const dir = mkdtempSync(join(tmpdir(), 'rl-host-formats-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const base = new PublishedDisk(new MemoryDiskSource(patternBytes(1024 * 1024, 3), 64 * 1024), {
    cache: new ChunkCache(4 * 1024 * 1024),
    name: 'p/sda',
  });
  const overlay = await Overlay.open({ dir, name: 'sda', base });
  await overlay.close();
  t.equal(
    readFileSync(join(dir, 'sda.map')).subarray(0, 8).toString('latin1'),
    OVERLAY_MAP_MAGIC,
    'an overlay map starts with the registered magic',
  );
});
