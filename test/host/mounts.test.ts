/**
 * The mount table: real mountinfo lines (octal escapes, optional fields,
 * FUSE) parse to real paths, and a tmpfs mounted at a path with a space in
 * it is found by every query, including the session runner's isMounted, which
 * once read /proc/mounts without unescaping and never matched such a path.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec, which } from '../../src/host/exec.js';
import { isMountPoint, mountEntry, mountsUnder, mountTable, parseMountinfo } from '../../src/host/mounts.js';
import { isMounted } from '../../src/session/runner.js';

// Lines as a Debian 12 kernel writes them (proc(5)); the second has two optional fields, the
// third a mount point and a source with a space (\040), a tab (\011) and a backslash (\134).
const MOUNTINFO = [
  '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro',
  '61 22 0:52 / /var/lib/restorelab/pub/a rw,nosuid,nodev,relatime shared:33 master:2 - fuse.restorelab restorelab rw,user_id=0,group_id=0',
  '75 22 0:60 / /srv/my\\040backups/tab\\011and\\134slash rw,relatime shared:40 - tmpfs my\\040tmpfs rw,size=1024k',
  '76 75 0:61 / /srv/my\\040backups/tab\\011and\\134slash/inner rw,relatime - tmpfs tmpfs rw',
  '',
  'not a mountinfo line',
].join('\n');

t.test('parses mountinfo lines, decoding octal escapes', async (t) => {
  const table = parseMountinfo(MOUNTINFO);
  t.equal(table.length, 4, 'four mounts, the blank and malformed lines skipped');
  t.same(table[0], { mountPoint: '/', fstype: 'ext4', source: '/dev/sda1', device: '8:1', shared: true });
  t.same(
    table[1],
    { mountPoint: '/var/lib/restorelab/pub/a', fstype: 'fuse.restorelab', source: 'restorelab', device: '0:52', shared: true },
    'optional fields skipped',
  );
  const spaced = '/srv/my backups/tab\tand\\slash';
  t.same(
    table[2],
    { mountPoint: spaced, fstype: 'tmpfs', source: 'my tmpfs', device: '0:60', shared: true },
    'space, tab and backslash decoded',
  );
  t.equal(table[3]?.shared, false, 'a mount with no optional field is not shared (private)');
  t.equal(mountEntry(spaced, table)?.device, '0:60', 'found by its real path');
  t.equal(mountEntry('/srv/my\\040backups/tab\\011and\\134slash', table), undefined, 'not by its escaped form');
  t.same(
    mountsUnder('/srv/my backups', table).map((m) => m.device),
    ['0:60', '0:61'],
    'mounts below a spaced directory',
  );
  t.same(mountsUnder('/srv/my', table), [], 'a name prefix is not a parent directory');
  t.equal(mountsUnder('/', table).length, 4, 'everything is under /');
});

t.test('a real tmpfs at a path with a space is found', async (t) => {
  const mount = which('mount');
  const umount = which('umount');
  if (!mount || !umount) throw new Error('mount/umount are missing: install mount (apt-get install mount)');
  const root = mkdtempSync(join(tmpdir(), 'rl-host-mounts-'));
  const dir = join(root, 'with space', 'and\ttab');
  mkdirSync(dir, { recursive: true });
  t.teardown(async () => {
    if (isMountPoint(dir)) await exec(umount, [dir], { timeoutMs: 10_000 });
    rmSync(root, { recursive: true, force: true });
  });
  t.notOk(isMountPoint(dir), 'not a mount point before');
  t.notOk(isMounted(join(root, 'with space')), 'nothing mounted below before');
  const r = await exec(mount, ['-t', 'tmpfs', '-o', 'size=1m', 'rl host space', dir], { timeoutMs: 10_000 });
  t.equal(r.code, 0, `mount tmpfs: ${r.stderr.trim()}`);
  const m = mountEntry(dir);
  t.equal(m?.fstype, 'tmpfs', 'found with its type');
  t.equal(m?.source, 'rl host space', 'and its source, unescaped');
  t.match(m?.device ?? '', /^\d+:\d+$/, 'and its device');
  t.ok(isMountPoint(dir), 'isMountPoint');
  t.ok(
    mountTable().some((e) => e.mountPoint === dir),
    'in the mount table',
  );
  t.same(
    mountsUnder(root).map((e) => e.mountPoint),
    [dir],
    'mountsUnder the parent',
  );
  t.ok(isMounted(join(root, 'with space')), 'the session runner sees the mount below a spaced path');
  t.ok(isMounted(dir), 'and at it');
  await exec(umount, [dir], { timeoutMs: 10_000 });
  t.notOk(isMountPoint(dir), 'gone after umount');
});
