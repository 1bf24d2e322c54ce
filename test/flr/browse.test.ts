// Path confinement on a plain directory tree (the same code runs on mounted
// partitions in mount.test.ts): symlink chains, loops, `..` through links,
// and what listings and tar streams do with links.
import t from 'tap';
import { mkdtempSync, mkdirSync, writeFileSync, symlinkSync, rmSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveGuestPath, listGuestPath, getGuestPath } from '../../src/flr/browse.js';
import { RestorelabError } from '../../src/errors.js';

const work = mkdtempSync(join(tmpdir(), 'flr-browse-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const root = join(work, 'root');
mkdirSync(join(root, 'a/b/c'), { recursive: true });
writeFileSync(join(root, 'a/b/c/file.txt'), 'deep\n');
writeFileSync(join(work, 'outside.txt'), 'host secret\n');
symlinkSync('b/c', join(root, 'a/to-c'));
symlinkSync('../to-c/file.txt', join(root, 'a/b/chain'));
symlinkSync('loop2', join(root, 'loop1'));
symlinkSync('loop1', join(root, 'loop2'));
symlinkSync('../outside.txt', join(root, 'sneaky'));
symlinkSync('a/b/../../..', join(root, 'up-and-out'));
symlinkSync('a/b/../..', join(root, 'up-to-root'));

async function code(p: Promise<unknown>): Promise<string | undefined> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  return e instanceof RestorelabError ? e.code : e === undefined ? undefined : String(e);
}

t.test('relative symlinks inside the tree are followed, chains included', async (t) => {
  t.equal((await resolveGuestPath(root, '/a/to-c/file.txt', { followFinal: true })).guestPath, '/a/b/c/file.txt');
  t.equal((await resolveGuestPath(root, 'a/b/chain', { followFinal: true })).guestPath, '/a/b/c/file.txt');
  t.equal(
    (await resolveGuestPath(root, '/up-to-root/a', { followFinal: true })).guestPath,
    '/a',
    'a link that climbs back to the root but not past it is fine',
  );
  t.equal((await resolveGuestPath(root, '/a/b/../b/./c', { followFinal: true })).guestPath, '/a/b/c');
});

t.test('escapes and loops are refused', async (t) => {
  t.equal(await code(resolveGuestPath(root, '/sneaky', { followFinal: true })), 'PATH_TRAVERSAL');
  t.equal(await code(resolveGuestPath(root, '/up-and-out/outside.txt', { followFinal: true })), 'PATH_TRAVERSAL');
  t.equal(await code(resolveGuestPath(root, '/..', { followFinal: true })), 'PATH_TRAVERSAL');
  t.equal(await code(resolveGuestPath(root, '/loop1', { followFinal: true })), 'PATH_TRAVERSAL', 'a symlink loop stops after 40 links');
  t.equal(await code(resolveGuestPath(root, '/a/b/c/file.txt/x', { followFinal: true })), 'GUEST_PATH_NOT_FOUND');
  t.equal(await code(resolveGuestPath(root, 'a\0b', { followFinal: true })), 'BAD_GUEST_PATH');
});

t.test('listings show symlinks without following them, even escaping ones', async (t) => {
  const l = await listGuestPath(root, '/');
  t.match(
    l.find((e) => e.name === 'sneaky'),
    { type: 'symlink', target: '../outside.txt' },
  );
  t.match(await listGuestPath(root, '/sneaky'), [{ type: 'symlink', target: '../outside.txt' }], 'a final symlink is listed, not followed');
});

t.test('a tar of the root keeps links as links and leaves FIFOs out', async (t) => {
  execFileSync('mkfifo', [join(root, 'a/fifo')]);
  const out = join(work, 'root.tar');
  const r = await getGuestPath(root, '/', out);
  t.match(r, { format: 'tar', skipped: 1 });
  const listing = execFileSync('tar', ['-tvf', out], { encoding: 'utf8' });
  t.match(listing, /\.\/sneaky -> \.\.\/outside\.txt/);
  t.match(listing, /\.\/a\/b\/c\/file\.txt/);
  t.notMatch(listing, /fifo/);
  t.notMatch(readFileSync(out, 'latin1'), /host secret/, 'nothing outside the tree is read');
});

t.test('get of a single file with --tar wraps it in a tar', async (t) => {
  const out = join(work, 'one.tar');
  const r = await getGuestPath(root, '/a/b/c/file.txt', out, { tar: true });
  t.match(r, { format: 'tar', files: 1 });
  t.equal(execFileSync('tar', ['-xOf', out, 'file.txt'], { encoding: 'utf8' }), 'deep\n');
});

t.test('a directory as the target receives the file (or <name>.tar) inside it', async (t) => {
  const into = join(work, 'into');
  mkdirSync(into);
  const f = await getGuestPath(root, '/a/b/c/file.txt', into);
  t.equal(f.to, join(into, 'file.txt'));
  t.equal(readFileSync(join(into, 'file.txt'), 'utf8'), 'deep\n');
  const d = await getGuestPath(root, '/a/b', into);
  t.equal(d.to, join(into, 'b.tar'));
  t.match(execFileSync('tar', ['-tf', d.to], { encoding: 'utf8' }), /b\/c\/file\.txt/);
});
