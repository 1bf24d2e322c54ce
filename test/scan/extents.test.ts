// The extent reader under the file maps (src/scan/extents.ts), on real files
// of the host's filesystem: filefrag's FIEMAP output parsed in bytes, one
// process for many files, and null (read the file) for anything that is not
// plain data at a known place: delayed allocation, an empty file, a name
// argv cannot carry, a file that is gone.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { closeSync, fsyncSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { extentsKey, readExtents } from '../../src/scan/extents.js';

if (spawnSync('sh', ['-c', 'command -v filefrag']).status !== 0)
  throw new Error('the extent tests need filefrag: apt-get install e2fsprogs');

// The temporary directory must be on a filesystem with FIEMAP (ext4 on this project's hosts; a tmpfs has none).
const dir = mkdtempSync(join(tmpdir(), 'extents-test-'));
const fstype = spawnSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' }).stdout.trim();
if (!['ext2/ext3', 'xfs', 'btrfs'].includes(fstype))
  throw new Error(`the extent tests need ${tmpdir()} on ext4, xfs or btrfs (it is ${fstype}): set TMPDIR`);
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function synced(name: string, data: Buffer): Buffer {
  const fd = openSync(join(dir, name), 'w');
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return Buffer.from(join(dir, name));
}

t.test('allocated files: byte extents covering the file, in the order asked', async (t) => {
  const a = synced('a.bin', randomBytes(300_000));
  const b = synced('b name with spaces is here.bin', randomBytes(5000));
  const gone = Buffer.from(join(dir, 'gone.bin'));
  const empty = synced('empty', Buffer.alloc(0));
  const odd = Buffer.concat([Buffer.from(join(dir, 'odd-')), Buffer.from([0xff, 0xfe])]);
  writeFileSync(odd, 'x');
  const nl = Buffer.from(join(dir, 'new\nline'));
  writeFileSync(nl, 'x');
  const [ea, eb, eg, ee, eo, en] = await readExtents([a, b, gone, empty, odd, nl]);
  t.ok(ea && ea.length >= 1, extentsKey(ea ?? []));
  t.equal(ea![0]!.logical, 0);
  t.ok(ea!.reduce((s, e) => s + e.length, 0) >= 300_000, 'the extents cover the file (block-rounded)');
  t.ok(
    ea!.every((e) => e.physical > 0 && e.physical % 512 === 0),
    'physical offsets in bytes on the device',
  );
  t.ok(eb && eb[0]!.length >= 5000, 'a name with " is " in it is matched exactly');
  t.equal(eg, null, 'a file that is gone');
  t.equal(ee, null, 'an empty file has no extents: read (it costs nothing)');
  t.equal(eo, null, 'a name that is not UTF-8 cannot go through argv unchanged');
  t.equal(en, null, 'nor one with a newline');
  const again = await readExtents([a]);
  t.equal(extentsKey(again[0]!), extentsKey(ea!), 'the same answer twice');
});

t.test('delayed allocation has no place yet: null', async (t) => {
  const p = join(dir, 'delalloc.bin');
  writeFileSync(p, randomBytes(100_000));
  const [e] = await readExtents([Buffer.from(p)]);
  // The kernel may have flushed it already under load; if so it is a plain extent list.
  const out = spawnSync('filefrag', ['-e', p], { encoding: 'utf8' }).stdout;
  if (/delalloc|unknown_loc/.test(out)) t.equal(e, null, out);
  else t.ok(e && e.length > 0, out);
});
