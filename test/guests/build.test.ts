/**
 * scripts/build-guests as a cache: the output dir comes from --out or
 * RESTORELAB_GUESTS_DIR, an image is rebuilt only when its recipe stamp
 * differs, the result is a sparse MBR disk with a bootable partition, and
 * nothing (loop device, mount, partial file) is left behind.
 */
import t from 'tap';
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  existsSync,
  readdirSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';
import { guestImage, guestsDir } from '../helpers/guests.js';

const builder = projectPath('scripts', 'build-guests');
const dir = mkdtempSync(join(tmpdir(), 'rl-build-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function head(path: string, n: number): Buffer {
  const b = Buffer.alloc(n);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, b, 0, n, 0);
  } finally {
    closeSync(fd);
  }
  return b;
}

t.test('builds into RESTORELAB_GUESTS_DIR or --out, and only when the recipe changed', async (t) => {
  await guestImage('web');
  const out = join(dir, 'out');
  // Share the downloaded packages with the main cache: this test is about the recipe, not apt.
  await exec('mkdir', ['-p', out]);
  symlinkSync(join(guestsDir(), 'debs'), join(out, 'debs'));

  const first = await exec(builder, ['db'], { env: { ...process.env, RESTORELAB_GUESTS_DIR: out }, timeoutMs: 600_000 });
  t.equal(first.code, 0, first.stderr);
  t.match(first.stdout, /built db/);
  const image = join(out, 'db.raw');
  const st = statSync(image);
  t.equal(st.size, 64 * 1024 * 1024, '64 MiB disk');
  t.ok(st.blocks * 512 < st.size, 'the image is sparse');
  const mbr = head(image, 512);
  t.equal(mbr.readUInt16LE(510), 0xaa55, 'MBR signature');
  t.equal(mbr[446], 0x80, 'the first partition is marked bootable');
  t.equal(mbr[450], 0x83, 'the first partition is a Linux partition');
  t.equal(mbr.readUInt32LE(454), 2048, 'it starts at sector 2048');
  t.same(mbr.subarray(0, 440), readFileSync('/usr/lib/EXTLINUX/mbr.bin').subarray(0, 440), 'the boot code is extlinux mbr.bin');

  const again = await exec(builder, ['--out', out, 'db'], { timeoutMs: 600_000 });
  t.equal(again.code, 0, again.stderr);
  t.match(again.stdout, /db is up to date/);
  t.equal(statSync(image).mtimeMs, st.mtimeMs, 'an unchanged recipe leaves the image alone');

  writeFileSync(join(out, 'db.stamp'), 'an older recipe\n');
  const rebuilt = await exec(builder, ['--out', out, 'db'], { timeoutMs: 600_000 });
  t.equal(rebuilt.code, 0, rebuilt.stderr);
  t.match(rebuilt.stdout, /built db/, 'a changed recipe stamp triggers a rebuild');
  t.not(readFileSync(join(out, 'db.stamp'), 'utf8'), 'an older recipe\n');

  t.same(
    readdirSync(out).filter((f) => f.endsWith('.part')),
    [],
    'no partial image left',
  );
  const loops = await exec('losetup', ['-a']);
  t.notMatch(loops.stdout, out, 'no loop device left attached');
  const mounts = readFileSync('/proc/mounts', 'utf8');
  t.notMatch(mounts, 'build-guests.', 'no build mount left');
});

t.test('bad input: an unknown variant or option fails with the fix', async (t) => {
  const out = join(dir, 'bad');
  const r = await exec(builder, ['--out', out, 'mainframe'], { timeoutMs: 60_000 });
  t.not(r.code, 0);
  t.match(r.stderr, /unknown variant 'mainframe' \(known: broken-app crash-loop damaged db dns no-agent no-boot vga-panic web/);
  t.notOk(existsSync(join(out, 'mainframe.raw')));
  const o = await exec(builder, ['--colour'], { timeoutMs: 60_000 });
  t.not(o.code, 0);
  t.match(o.stderr, /unknown option --colour \(usage: scripts\/build-guests/);
  await t.rejects(guestImage('mainframe'), /unknown test guest "mainframe"; known: broken-app, crash-loop, damaged, db/);
});
