// The in-process ext reader against images made by the real mke2fs -d (and
// e2fsck -D for htree directories, debugfs for uninitialized extents): every
// file's bytes, size and type, and the tree, compared with what was put in;
// then hostile images (bytes flipped in metadata) that must fail cleanly.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  writeSync,
  openSync,
  closeSync,
  ftruncateSync,
  lstatSync,
  readdirSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ext4Volume, INODE_FLAGS, type ByteSource, type ByteVisitor, type Inode } from '../../src/fsread/ext4.js';
import { RestorelabError } from '../../src/errors.js';

const MKE2FS = '/usr/sbin/mke2fs';
const E2FSCK = '/usr/sbin/e2fsck';
const DEBUGFS = '/usr/sbin/debugfs';

// Seven images of 3000 files and 200 fuzz rounds: more than the default 30 s on a busy 2-core host.
t.setTimeout(300_000);

const work = mkdtempSync(join(tmpdir(), 'rl-ext4-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

/** What the tree holds, by guest path: type, and bytes or target. */
interface Expected {
  type: 'file' | 'dir' | 'symlink';
  bytes?: Buffer;
}

/** Builds the source tree: small, block-sized, multi-extent, sparse, empty files; short and long symlinks; deep and odd names. */
function buildTree(root: string, opts: { manyFiles?: number } = {}): Map<string, Expected> {
  const want = new Map<string, Expected>();
  const dir = (p: string): void => {
    mkdirSync(join(root, p));
    want.set(`/${p}`, { type: 'dir' });
  };
  const file = (p: string, bytes: Buffer): void => {
    writeFileSync(join(root, p), bytes);
    want.set(`/${p}`, { type: 'file', bytes });
  };
  file('empty', Buffer.alloc(0));
  file('small.txt', Buffer.from('hello ext4\n'));
  file('block', randomBytes(4096));
  file('odd', randomBytes(5000));
  file('big.bin', randomBytes(3 * 1024 * 1024 + 17));
  // Sparse: data, a hole of 2 MiB, data, and a hole at the end.
  const sparse = Buffer.alloc(5 * 1024 * 1024);
  randomBytes(8192).copy(sparse, 0);
  randomBytes(8192).copy(sparse, 2 * 1024 * 1024 + 8192);
  const fd = openSync(join(root, 'sparse'), 'w');
  try {
    writeSync(fd, sparse, 0, 8192, 0);
    writeSync(fd, sparse, 2 * 1024 * 1024 + 8192, 8192, 2 * 1024 * 1024 + 8192);
    ftruncateSync(fd, sparse.length);
  } finally {
    closeSync(fd);
  }
  want.set('/sparse', { type: 'file', bytes: sparse });
  dir('a');
  let deep = 'a';
  for (let i = 0; i < 20; i++) {
    deep += `/d${i}`;
    dir(deep);
  }
  file(`${deep}/deep.txt`, Buffer.from('at the bottom\n'));
  file('a/name with spaces', Buffer.from('x'));
  file('a/..dots..', Buffer.from('y'));
  file(`a/${'L'.repeat(255)}`, Buffer.from('long name'));
  symlinkSync('small.txt', join(root, 'short-link'));
  want.set('/short-link', { type: 'symlink', bytes: Buffer.from('small.txt') });
  const longTarget = `/${'t'.repeat(120)}/x`;
  symlinkSync(longTarget, join(root, 'long-link'));
  want.set('/long-link', { type: 'symlink', bytes: Buffer.from(longTarget) });
  symlinkSync('loop-b', join(root, 'loop-a'));
  symlinkSync('loop-a', join(root, 'loop-b'));
  want.set('/loop-a', { type: 'symlink', bytes: Buffer.from('loop-b') });
  want.set('/loop-b', { type: 'symlink', bytes: Buffer.from('loop-a') });
  if (opts.manyFiles) {
    dir('many');
    for (let i = 0; i < opts.manyFiles; i++) file(`many/file-${i}`, Buffer.from(`file ${i}\n`));
  }
  return want;
}

function sourceOf(path: string): { read: ByteSource; size: number } {
  const image = readFileSync(path);
  return { read: async (o, l) => image.subarray(o, o + l), size: image.length };
}

/** A visitor over `read` handing out pieces of at most 3000 bytes (PublishedDisk.visit hands one per chunk). */
function visitorOf(read: ByteSource): ByteVisitor {
  return async (o, l, use) => {
    const b = await read(o, l);
    for (let at = 0; at < b.length; at += 3000) use(b.subarray(at, Math.min(b.length, at + 3000)));
    return b.length;
  };
}

/** The file's bytes as visitFile hands them out, copied and joined. */
async function visited(vol: Ext4Volume, inode: Inode, read: ByteSource, offset = 0, length = inode.size): Promise<Buffer> {
  const pieces: Buffer[] = [];
  await vol.visitFile(inode, await vol.extents(inode), offset, length, (p) => void pieces.push(Buffer.from(p)), visitorOf(read));
  return Buffer.concat(pieces);
}

async function readAll(vol: Ext4Volume): Promise<Map<string, Expected & { inode: Inode }>> {
  const got = new Map<string, Expected & { inode: Inode }>();
  for await (const e of vol.walk()) {
    const path = e.path.toString('utf8');
    if (path === '/lost+found') continue;
    if (e.inode.type === 'file') {
      const ext = await vol.extents(e.inode);
      got.set(path, { type: 'file', bytes: await vol.readFile(e.inode, ext, 0, e.inode.size), inode: e.inode });
    } else if (e.inode.type === 'symlink') got.set(path, { type: 'symlink', bytes: await vol.readlink(e.inode), inode: e.inode });
    else if (e.inode.type === 'dir') got.set(path, { type: 'dir', inode: e.inode });
  }
  return got;
}

const src = join(work, 'src');
mkdirSync(src);
const want = buildTree(src, { manyFiles: 3000 });
t.ok(lstatSync(join(src, 'sparse')).blocks * 512 < 1024 * 1024, 'the source file is sparse');
t.equal(readdirSync(join(src, 'many')).length, 3000);

const VARIANTS: { name: string; args: string[]; fstype: string; htree?: boolean }[] = [
  { name: 'ext4 4 KiB 64bit', args: ['-t', 'ext4', '-b', '4096', '-O', '64bit'], fstype: 'ext4' },
  { name: 'ext4 1 KiB without 64bit', args: ['-t', 'ext4', '-b', '1024', '-O', '^64bit'], fstype: 'ext4' },
  { name: 'ext4 4 KiB, htree directories (e2fsck -D)', args: ['-t', 'ext4', '-b', '4096'], fstype: 'ext4', htree: true },
  { name: 'ext4 without extents (block maps)', args: ['-t', 'ext4', '-b', '4096', '-O', '^extent,^64bit'], fstype: 'ext4' },
  { name: 'ext3 1 KiB (block maps, journal)', args: ['-t', 'ext3', '-b', '1024'], fstype: 'ext3' },
  { name: 'ext2 2 KiB', args: ['-t', 'ext2', '-b', '2048'], fstype: 'ext2' },
  { name: 'ext4 with 128-byte inodes', args: ['-t', 'ext4', '-b', '4096', '-I', '128'], fstype: 'ext4' },
];

for (const v of VARIANTS) {
  t.test(`${v.name}: every file, link and directory reads back as it was put in`, async (t) => {
    const image = join(work, `${v.name.replace(/\W+/g, '-')}.img`);
    execFileSync(MKE2FS, ['-q', '-F', ...v.args, '-d', src, image, '64M'], { stdio: 'ignore' });
    if (v.htree) execFileSync(E2FSCK, ['-fyD', image], { stdio: 'ignore' });
    const { read, size } = sourceOf(image);
    const vol = await Ext4Volume.open(read, size);
    t.equal(vol.fstype, v.fstype);
    const got = await readAll(vol);
    let visitedWrong = 0;
    for (const g of got.values()) if (g.type === 'file' && !(await visited(vol, g.inode, read)).equals(g.bytes!)) visitedWrong++;
    t.equal(visitedWrong, 0, 'visitFile hands out the same bytes as readFile, holes as zeros, for every file');
    t.same([...got.keys()].sort(), [...want.keys()].sort(), 'the same tree');
    let bad = 0;
    for (const [path, w] of want) {
      const g = got.get(path);
      if (!g || g.type !== w.type || (w.bytes && !g.bytes!.equals(w.bytes))) {
        bad++;
        if (bad < 5) t.fail(`${path}: ${g?.type} ${g?.bytes?.length} bytes, wanted ${w.type} ${w.bytes?.length}`);
      } else if (w.type === 'file' && g.inode.size !== w.bytes!.length) bad++;
    }
    t.equal(bad, 0, 'every entry has its type, size and bytes');
    if (v.htree) t.ok(got.get('/many')!.inode.flags & INODE_FLAGS.INDEX, 'the 3000-file directory is an htree');
    const sparse = got.get('/sparse')!;
    const ext = await vol.extents(sparse.inode);
    t.ok(ext.reduce((n, e) => n + e.length, 0) < 1024 * 1024, 'the hole is not allocated');
    t.same(
      (await visited(vol, sparse.inode, read, 2 * 1024 * 1024 + 4096, 8192)).toString('hex'),
      (await vol.readFile(sparse.inode, ext, 2 * 1024 * 1024 + 4096, 8192)).toString('hex'),
      'visitFile of a range across the hole',
    );
    t.same(
      (await vol.readFile(sparse.inode, ext, 2 * 1024 * 1024 + 4096, 8192)).toString('hex'),
      want
        .get('/sparse')!
        .bytes!.subarray(2 * 1024 * 1024 + 4096, 2 * 1024 * 1024 + 12288)
        .toString('hex'),
      'a read across a hole and data',
    );
  });
}

t.test('uninitialized extents read as zeros whatever the blocks hold', async (t) => {
  const dir = join(work, 'prealloc');
  mkdirSync(dir);
  // debugfs allocates uninitialized blocks; they are then filled with 0xAB on disk, which must not show.
  writeFileSync(join(dir, 'f'), Buffer.alloc(0));
  const image = join(work, 'prealloc.img');
  execFileSync(MKE2FS, ['-q', '-F', '-t', 'ext4', '-b', '4096', '-d', dir, image, '16M'], { stdio: 'ignore' });
  execFileSync(DEBUGFS, ['-w', '-R', 'fallocate /f 0 9', image], { stdio: 'ignore' });
  execFileSync(DEBUGFS, ['-w', '-R', 'sif /f size 40960', image], { stdio: 'ignore' });
  const after = readFileSync(image);
  const { read, size } = { read: (async (o: number, l: number) => after.subarray(o, o + l)) as ByteSource, size: after.length };
  const vol = await Ext4Volume.open(read, size);
  let f: Inode | undefined;
  for await (const e of vol.walk()) if (e.path.toString() === '/f') f = e.inode;
  const ext = await vol.extents(f!);
  t.ok(ext.length > 0 && ext.every((e) => e.zero), 'the extents are uninitialized');
  for (const e of ext) after.fill(0xab, e.physical, e.physical + e.length);
  const data = await vol.readFile(f!, ext, 0, f!.size);
  t.ok((await visited(vol, f!, read)).equals(data), 'visitFile: the same zeros');
  t.equal(data.length, 40960);
  t.ok(
    data.every((b) => b === 0),
    'zeros, not the 0xAB on disk',
  );
});

t.test('features the reader does not handle are refused up front, so the caller mounts instead', async (t) => {
  const refused: [string, string][] = [
    ['inline_data', 'inline_data'],
    ['meta_bg,^resize_inode', 'meta_bg'],
  ];
  for (const [feature, name] of refused) {
    const image = join(work, `${name}.img`);
    execFileSync(MKE2FS, ['-q', '-F', '-t', 'ext4', '-O', feature, image, '16M'], { stdio: 'ignore' });
    const { read, size } = sourceOf(image);
    const err = await Ext4Volume.open(read, size).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(err instanceof RestorelabError, name);
    t.match((err as RestorelabError).code, 'EXT4_UNSUPPORTED');
    t.match((err as RestorelabError).message, name);
  }
  const xfsLike = Buffer.alloc(8192);
  const err = await Ext4Volume.open(async (o, l) => xfsLike.subarray(o, o + l), xfsLike.length).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match((err as RestorelabError).code, 'EXT4_CORRUPT', 'no superblock: a clean error');
});

/** A small deterministic generator: the same flips on every run, reproducible from the seed in a failure. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

t.test(
  'bytes flipped in metadata: the reader throws a clean error or reads on, never hangs or crashes',
  { timeout: 300_000 },
  async (t) => {
    const dir = join(work, 'fuzz-src');
    mkdirSync(dir);
    buildTree(dir, { manyFiles: 100 });
    for (const [label, args] of [
      ['extents', ['-t', 'ext4', '-b', '1024']],
      ['block maps', ['-t', 'ext3', '-b', '1024']],
    ] as const) {
      const image = join(work, `fuzz-${label.replace(' ', '-')}.img`);
      execFileSync(MKE2FS, ['-q', '-F', ...args, '-d', dir, image, '16M'], { stdio: 'ignore' });
      if (label === 'extents') execFileSync(E2FSCK, ['-fyD', image], { stdio: 'ignore' });
      const clean = readFileSync(image);
      // Metadata blocks: everything not holding regular-file data (superblock, descriptors, inode tables, directories, index blocks).
      const vol = await Ext4Volume.open(async (o, l) => clean.subarray(o, o + l), clean.length);
      const data = new Set<number>();
      for await (const e of vol.walk())
        if (e.inode.type === 'file')
          for (const x of await vol.extents(e.inode)) for (let b = x.physical; b < x.physical + x.length; b += 1024) data.add(b / 1024);
      const dump = execFileSync('/usr/sbin/dumpe2fs', [image], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
      const tables = [...dump.matchAll(/Inode table at (\d+)-(\d+)/g)].map((m) => [Number(m[1]), Number(m[2])] as const);
      const meta: number[] = [1, 2];
      // The used part of the first inode table, and every directory or index block.
      for (let b = tables[0]![0]; b < tables[0]![0] + 64 && b <= tables[0]![1]; b++) meta.push(b);
      for await (const e of vol.walk())
        if (e.inode.type === 'dir')
          for (const x of await vol.extents(e.inode)) for (let b = x.physical; b < x.physical + x.length; b += 1024) meta.push(b / 1024);
      const rand = rng(label === 'extents' ? 17 : 23);
      let failed = 0;
      let readOn = 0;
      const ROUNDS = 100;
      for (let round = 0; round < ROUNDS; round++) {
        const img = Buffer.from(clean);
        const flips = 1 + Math.floor(rand() * 8);
        for (let i = 0; i < flips; i++) {
          const block = meta[Math.floor(rand() * meta.length)]!;
          const at = block * 1024 + Math.floor(rand() * 1024);
          img[at] = img[at]! ^ (1 + Math.floor(rand() * 255));
        }
        if (data.size === 0) throw new Error('no data blocks');
        const run = (async () => {
          const v = await Ext4Volume.open(async (o, l) => img.subarray(o, o + l), img.length);
          for await (const e of v.walk()) {
            if (e.inode.type === 'file') await v.readFile(e.inode, await v.extents(e.inode), 0, Math.min(e.inode.size, 1 << 20));
            else if (e.inode.type === 'symlink') await v.readlink(e.inode);
          }
        })();
        let timer: NodeJS.Timeout | undefined;
        const outcome = await Promise.race([
          run.then(
            () => 'ok',
            (e: unknown) => e,
          ),
          new Promise((res) => (timer = setTimeout(() => res('hang'), 10_000))),
        ]);
        clearTimeout(timer);
        if (outcome === 'ok') readOn++;
        else if (outcome instanceof RestorelabError && (outcome.code === 'EXT4_CORRUPT' || outcome.code === 'EXT4_UNSUPPORTED')) failed++;
        else {
          t.fail(`${label} round ${round}: ${outcome === 'hang' ? 'hung' : String((outcome as Error)?.stack ?? outcome)}`);
          return;
        }
      }
      t.equal(failed + readOn, ROUNDS, `${label}: ${failed} clean errors, ${readOn} read on`);
      t.ok(failed >= ROUNDS / 20, `${label}: the flips were noticed (${failed} times)`);
    }
  },
);
