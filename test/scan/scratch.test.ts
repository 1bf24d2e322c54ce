// The scan's scratch (src/scan/scratch.ts): copies for yara in a private
// tmpfs directory, kept for the next file once answered. A kept copy that is
// overwritten by a shorter file holds exactly the new bytes (cut on close),
// the kept files are bounded, big files go to the disk scratch, and
// dispose removes everything.
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MEMORY_FILE_MAX, openScratch } from '../../src/scan/scratch.js';

const work = mkdtempSync(join(tmpdir(), 'scan-scratch-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
/** A tmpfs root of the test's own (/dev/shm is shared with everything else on the host). */
const shm = mkdtempSync('/dev/shm/scan-scratch-test-');
t.teardown(() => rmSync(shm, { recursive: true, force: true }));

t.test('a copy yara answered for is reused: the next file overwrites it and is cut to its own length', async (t) => {
  const s = openScratch(join(work, 'a'), { memoryRoot: shm });
  t.ok(s.inMemory);
  const first = await s.create('0', 10);
  await first.write(Buffer.from('0123456789'));
  await first.close();
  t.equal(statSync(first.path).mode & 0o777, 0o600);
  first.remove();
  t.ok(existsSync(first.path), 'kept for the next file');
  const second = await s.create('1', 4);
  t.equal(second.path, first.path, 'the kept copy is reused');
  await second.write(Buffer.from('ab'));
  await second.write(Buffer.from('cd'));
  await second.close();
  t.same(readFileSync(second.path), Buffer.from('abcd'), 'only the new bytes: the old tail is cut');
  const third = await s.create('2', 3);
  t.not(third.path, second.path, 'a copy still in use is not handed out again');
  await third.write(Buffer.from('xyz'));
  await third.close();
  t.same(readFileSync(third.path), Buffer.from('xyz'));
  second.remove();
  second.remove();
  third.remove();
  const memDir = readdirSync(shm).find((d) => d.startsWith('restorelab-scan-'))!;
  t.equal(statSync(join(shm, memDir)).mode & 0o777, 0o700);
  s.dispose();
  t.same(readdirSync(shm), [], 'dispose removes the memory directory with its kept copies');
  t.notOk(existsSync(join(work, 'a')), 'and the disk scratch');
});

t.test('kept copies are bounded; a copy removed before it was closed is not kept; big files go to disk', async (t) => {
  const s = openScratch(join(work, 'b'), { memoryRoot: shm });
  const copies = [];
  for (let i = 0; i < 300; i++) {
    const c = await s.create(String(i), 1);
    await c.write(Buffer.from('x'));
    await c.close();
    copies.push(c);
  }
  for (const c of copies) c.remove();
  const memDir = join(
    shm,
    readdirSync(shm).find((d) => d.startsWith('restorelab-scan-'))!,
  );
  t.equal(readdirSync(memDir).length, 256, 'at most 256 kept, the others removed');
  const open = await s.create('open', 1);
  open.remove();
  t.equal(readdirSync(memDir).length, 255, 'a copy that failed half-written (never closed) is removed, not kept');
  const big = await s.create('big', MEMORY_FILE_MAX + 1);
  t.ok(big.path.startsWith(join(work, 'b')), 'a file above MEMORY_FILE_MAX goes to the disk scratch');
  await big.close();
  big.remove();
  t.notOk(existsSync(big.path));
  s.dispose();
  t.same(readdirSync(shm), []);
});
