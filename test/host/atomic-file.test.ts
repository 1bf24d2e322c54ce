/**
 * writeFileAtomic and friends on a real filesystem: the target holds the new
 * bytes with the asked mode, no temp file is left behind on success or
 * failure, and commitTempFile puts a caller-written temp file into place.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commitTempFile, tempPathFor, TEMP_PREFIX, writeFileAtomic, writeFileAtomicSync } from '../../src/host/atomic-file.js';

function scratch(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'rl-host-atomic-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

for (const [label, write] of [
  ['async', (d: string, n: string, b: string, m?: number) => writeFileAtomic(d, n, b, m)],
  ['sync', async (d: string, n: string, b: string, m?: number) => writeFileAtomicSync(d, n, b, m)],
] as const) {
  t.test(`${label}: creates, replaces, keeps the mode, leaves no temp`, async (t) => {
    const dir = scratch(t);
    await write(dir, 'state.json', 'old');
    t.equal(readFileSync(join(dir, 'state.json'), 'utf8'), 'old');
    t.equal(statSync(join(dir, 'state.json')).mode & 0o777, 0o644 & ~process.umask(), 'default mode 0644, less the umask');
    await write(dir, 'state.json', 'new and longer', 0o600);
    t.equal(readFileSync(join(dir, 'state.json'), 'utf8'), 'new and longer', 'replaced whole');
    t.equal(statSync(join(dir, 'state.json')).mode & 0o777, 0o600 & ~process.umask(), 'the asked mode');
    t.same(readdirSync(dir), ['state.json'], 'no temp file left');
  });

  t.test(`${label}: a failed rename leaves the target and no temp`, async (t) => {
    const dir = scratch(t);
    // A non-empty directory under the target name: rename(2) refuses to replace it.
    mkdirSync(join(dir, 'busy'));
    writeFileSync(join(dir, 'busy', 'x'), 'x');
    await t.rejects(write(dir, 'busy', 'data'), /EISDIR|ENOTEMPTY|EEXIST/);
    t.same(
      readdirSync(dir).filter((f) => f.startsWith(TEMP_PREFIX)),
      [],
      'the temp file was removed',
    );
    t.same(readdirSync(join(dir, 'busy')), ['x'], 'the target is untouched');
  });
}

t.test('commitTempFile puts a streamed temp file into place', async (t) => {
  const dir = scratch(t);
  const target = join(dir, 'disk.raw');
  writeFileSync(target, 'previous');
  const tmp = tempPathFor(target);
  t.ok(tmp.startsWith(join(dir, TEMP_PREFIX)), 'the temp path is beside the target, under the temp prefix');
  writeFileSync(tmp, Buffer.alloc(1 << 20, 7));
  await commitTempFile(tmp, target);
  t.equal(statSync(target).size, 1 << 20, 'the new file is in place');
  t.same(readdirSync(dir), ['disk.raw'], 'the temp name is gone');
  await t.rejects(commitTempFile(join(dir, `${TEMP_PREFIX}missing`), target), { code: 'ENOENT' }, 'a missing temp file is an error');
});
