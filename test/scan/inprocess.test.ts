// scanPoint reading ext4 in-process (no mount) against the mount path on the
// same restore point, with real mke2fs, yara and a real repository. The disk
// has two partitions: p1 is plain ext4 (read in-process) holding an infected
// file twenty directories deep, an htree directory of 3000 files, a symlink
// loop, a link climbing out to the host's /etc/passwd, and hostile names (a
// newline, bytes that are not UTF-8, 255 characters, dots); p2 is ext4 with
// inline_data, which the reader refuses, so it is mounted. Both ways give
// the same verdict, matches and file counts; the in-process way says so per
// partition, and the scratch copies yara reads carry numbers, never guest names.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backupVm } from '../../src/backup/engine.js';
import { initRepository } from '../../src/repo/repository.js';
import { connectCatalog } from '../../src/catalog/catalog.js';
import { compileRules } from '../../src/scan/yara.js';
import { scanPoint, type PointScan } from '../../src/scan/scan.js';
import { listSessions } from '../../src/flr/session.js';
import { sha256 } from '../helpers/planted-guest.js';

t.setTimeout(600_000);

const MARK = 'INPROCESS-SCAN-MARK-4d2e';
const work = mkdtempSync(join(tmpdir(), 'scan-inprocess-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
/** The tmpfs root the reader's small copies go to (the default, /dev/shm, is shared with everything else on the host). */
const shm = mkdtempSync('/dev/shm/scan-inprocess-test-');
t.teardown(() => rmSync(shm, { recursive: true, force: true }));

const MiB = 1024 * 1024;
const tree = join(work, 'tree');
const deep = `/${Array.from({ length: 20 }, (_, i) => `level-${i}`).join('/')}`;
const newlineName = Buffer.from('/odd/new\nline.bin');
const notUtf8 = Buffer.concat([Buffer.from('/odd/f'), Buffer.from([0xff, 0xfe]), Buffer.from('.bin')]);
const longName = `/odd/${'n'.repeat(255)}`;
/** Guest path -> content of every regular file of p1. */
const files = new Map<string, Buffer>();
const put = (guest: Buffer | string, content: Buffer | string): void => {
  const g = Buffer.isBuffer(guest) ? guest : Buffer.from(guest);
  const host = Buffer.concat([Buffer.from(tree), g]);
  writeFileSync(host, content);
  files.set(g.toString('latin1'), Buffer.from(content));
};
mkdirSync(tree);
mkdirSync(join(tree, deep.slice(1)), { recursive: true });
mkdirSync(join(tree, 'odd'));
mkdirSync(join(tree, 'many'));
put(`${deep}/evil.bin`, `payload ${MARK} deep down`);
put(newlineName, `${MARK} under a name with a newline`);
put(notUtf8, 'clean, under a name that is not UTF-8');
put(longName, 'clean, long name');
put('/odd/..dots..', 'clean, dots');
put('/odd/-rf', 'clean, a name like a flag');
put('/big.bin', Buffer.alloc(3 * MiB + 5, 7));
for (let i = 0; i < 3000; i++) put(`/many/file-${i}`, `file number ${i}\n`);
symlinkSync('loop-b', join(tree, 'loop-a'));
symlinkSync('loop-a', join(tree, 'loop-b'));
symlinkSync('../../../../../../../../etc/passwd', join(tree, 'odd/climb'));
symlinkSync('/etc/passwd', join(tree, 'passwd-link'));
const p2tree = join(work, 'tree2');
mkdirSync(p2tree);
writeFileSync(join(p2tree, 'tiny.txt'), 'inline data, read through the mount\n');
writeFileSync(join(p2tree, 'hit.txt'), `${MARK} on the mounted partition\n`);

// p1: 64 MiB at 1 MiB, p2: 16 MiB after it. Each filesystem is made in its own file
// (e2fsck -D turns the 3000-file directory into an htree), then copied in.
const disk = join(work, 'disk.raw');
execFileSync('truncate', ['-s', '96M', disk]);
execFileSync('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048, size=131072, type=83\nstart=133120, size=32768, type=83\n' });
const p1 = join(work, 'p1.img');
execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, p1, '64M'], { stdio: 'ignore' });
execFileSync('e2fsck', ['-fyD', p1], { stdio: 'ignore' });
const p2 = join(work, 'p2.img');
execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-O', 'inline_data', '-d', p2tree, p2, '16M'], { stdio: 'ignore' });
execFileSync('dd', [`if=${p1}`, `of=${disk}`, 'bs=1M', 'seek=1', 'conv=notrunc'], { stdio: 'ignore' });
execFileSync('dd', [`if=${p2}`, `of=${disk}`, 'bs=512', 'seek=133120', 'conv=notrunc'], { stdio: 'ignore' });
const htreeFlags = /Flags: 0x([0-9a-f]+)/.exec(
  execFileSync('debugfs', ['-R', 'stat /many', p1], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }),
);

const repo = await initRepository(join(work, 'repo'));
const point = await backupVm({
  repo,
  vm: { name: 'fsread-guest', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
  disks: { sda: disk },
});
const rulesFile = join(work, 'r.yar');
writeFileSync(
  rulesFile,
  `rule Mark { strings: $a = "${MARK}" condition: $a }\nrule HostPasswd { strings: $a = "root:x:0:0:" condition: $a }\n`,
);
const rules = await compileRules(rulesFile, work);
t.teardown(() => rules.dispose());

/** One scan on a catalog and state directory of its own, so neither way answers from the other's cache. */
async function scanOnce(via: 'auto' | 'mount', watch?: (stateDir: string) => void, pointId = point.id): Promise<PointScan> {
  const stateDir = join(work, `state-${via}`);
  const db = await connectCatalog(join(work, `catalog-${via}.sqlite`));
  try {
    return await scanPoint({
      repo,
      point: pointId,
      stateDir,
      db,
      rules,
      via,
      memoryScratch: shm,
      ...(watch ? { onProgress: () => watch(stateDir) } : {}),
    });
  } finally {
    await db.close();
  }
}

const infected = [
  { rule: 'Mark', disk: 'sda', partition: 1, path: `${deep}/evil.bin`, sha256: sha256(files.get(`${deep}/evil.bin`)!) },
  {
    rule: 'Mark',
    disk: 'sda',
    partition: 1,
    path: newlineName.toString('utf8'),
    sha256: sha256(files.get(newlineName.toString('latin1'))!),
  },
  { rule: 'Mark', disk: 'sda', partition: 2, path: '/hit.txt', sha256: sha256(`${MARK} on the mounted partition\n`) },
];

let inProcess: PointScan;

t.test('in-process: the deep and oddly named infected files are found, p1 read without a mount, p2 mounted', async (t) => {
  t.ok(htreeFlags && Number.parseInt(htreeFlags[1]!, 16) & 0x1000, 'the 3000-file directory is an htree');
  t.match(readFileSync('/etc/passwd', 'utf8'), /root:x:0:0:/, 'the host file the links point to would match');
  /** Names seen in the scan's scratch directories while files were staged. */
  const staged = new Set<string>();
  let looks = 0;
  /** Copies seen in the tmpfs scratch (small files are staged in memory, not in the state directory). */
  let inMemory = 0;
  inProcess = await scanOnce('auto', (stateDir) => {
    if (looks++ % 50 !== 0) return;
    for (const scan of readdirSync(join(stateDir, 'flr')).filter((n) => n.startsWith('scan-'))) {
      const dir = join(stateDir, 'flr', scan);
      for (const n of readdirSync(dir)) staged.add(`top:${n}`);
      if (existsSync(join(dir, 'files'))) for (const n of readdirSync(join(dir, 'files'))) staged.add(n);
    }
    for (const mem of readdirSync(shm)) {
      t.equal(statSync(join(shm, mem)).mode & 0o777, 0o700, 'the memory scratch is private');
      for (const n of readdirSync(join(shm, mem))) {
        staged.add(n);
        inMemory++;
      }
    }
  });
  t.equal(inProcess.verdict, 'infected');
  t.same(inProcess.matches, infected, 'no host file read through a link; the guest paths are named as they are');
  t.match(inProcess.partitions, [
    { disk: 'sda', partition: 1, fstype: 'ext4', via: 'reader', files: files.size },
    { disk: 'sda', partition: 2, fstype: 'ext4', via: 'mount', files: 2, mountReason: /inline_data/ },
  ]);
  t.same(inProcess.files, { scanned: files.size + 2, cached: 0 });
  t.ok(looks > 0 && staged.size > 0, `the scratch directory was looked at ${looks} times`);
  const names = [...staged].filter((n) => !n.startsWith('top:'));
  t.ok(names.length > 0, `${names.length} staged names seen`);
  t.same(
    names.filter((n) => !/^\d+$/.test(n)),
    [],
    'yara reads numbered copies, never a guest name',
  );
  t.same(
    [...staged].filter((n) => n.startsWith('top:') && !['top:files', 'top:mnt'].includes(n)),
    [],
    'nothing else in the scan directory',
  );
  t.same(
    readdirSync(join(work, 'state-auto', 'flr')).filter((n) => n.startsWith('scan-')),
    [],
    'the scratch directory is removed',
  );
  t.ok(inMemory > 0, `${inMemory} copies seen in the memory scratch`);
  t.same(readdirSync(shm), [], 'the memory scratch is removed');
  t.same(listSessions(join(work, 'state-auto')), [], 'the mount of p2 is taken down');
});

t.test('the mount path gives the same verdict, matches and file counts on the same point', async (t) => {
  const mounted = await scanOnce('mount');
  t.equal(mounted.verdict, inProcess.verdict);
  t.same(mounted.matches, inProcess.matches);
  t.same(mounted.files, inProcess.files);
  t.same(
    mounted.partitions.map((p) => [p.partition, p.fstype, p.files, p.via]),
    inProcess.partitions.map((p) => [p.partition, p.fstype, p.files, 'mount']),
  );
});

t.test('the next point, unchanged: extents from the reader let the file map answer every p1 file unread', async (t) => {
  const next = await backupVm({
    repo,
    vm: { name: 'fsread-guest', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
    disks: { sda: disk },
  });
  const again = await scanOnce('auto', undefined, next.id);
  t.same(again.matches, infected);
  t.same(again.files, { scanned: 0, cached: files.size + 2 });
  t.equal(again.unread, files.size, 'every p1 file unread (p2 holds inline files, which are read)');
});

t.test('a filesystem damaged mid-tree fails the scan with a clean error, nothing recorded as clean', async (t) => {
  // Point the htree directory's inode at a block outside the filesystem.
  const broken = join(work, 'broken.raw');
  execFileSync('cp', [disk, broken]);
  const p1b = join(work, 'p1b.img');
  execFileSync('cp', [p1, p1b]);
  execFileSync('debugfs', ['-w', '-R', 'sif /many block[5] 0xfffffff', p1b], { stdio: 'ignore' });
  execFileSync('dd', [`if=${p1b}`, `of=${broken}`, 'bs=1M', 'seek=1', 'conv=notrunc'], { stdio: 'ignore' });
  const bad = await backupVm({
    repo,
    vm: { name: 'fsread-broken', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
    disks: { sda: broken },
  });
  const db = await connectCatalog(join(work, 'catalog-broken.sqlite'));
  t.teardown(() => db.close());
  const err = await scanPoint({ repo, point: bad.id, stateDir: join(work, 'state-broken'), db, rules }).then(
    () => undefined,
    (e: unknown) => e as { code?: string; message?: string },
  );
  t.match(err, { code: 'EXT4_CORRUPT', message: /outside the filesystem/ });
  t.same(listSessions(join(work, 'state-broken')), []);
});
