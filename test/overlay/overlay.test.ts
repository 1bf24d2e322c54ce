import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  BLOCK_SIZE,
  Overlay,
  OverlayBudget,
  OverlayError,
  discardOverlay,
  overlayFiles,
  type OverlayBase,
} from '../../src/overlay/overlay.js';
import { patternBytes } from '../publish/fixtures/memory-repository.js';
import { crashWrite, patternBase } from './fixtures/crash-plan.js';

function memBase(size: number): OverlayBase & { bytes: Buffer; reads: number } {
  const bytes = patternBytes(size, 3);
  const b = {
    size,
    bytes,
    reads: 0,
    readInto: async (o: number, target: Buffer) => {
      b.reads++;
      return bytes.copy(target, 0, o, Math.min(size, o + target.length));
    },
  };
  return b;
}

function tmpdir(t: { teardown(fn: () => void): void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-overlay-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('reads merge the overlay over the base, partial blocks keep the base bytes', async (t) => {
  const dir = tmpdir(t);
  const base = memBase(1024 * 1024);
  const expect = Buffer.from(base.bytes);
  const ov = await Overlay.open({ dir, name: 'sda', base });
  t.teardown(() => ov.close());
  t.ok((await ov.read(0, 8192)).equals(expect.subarray(0, 8192)), 'empty overlay reads the base');
  const writes: Array<[number, Buffer]> = [
    [0, Buffer.alloc(4096, 1)],
    [10000, Buffer.alloc(300, 2)],
    [BLOCK_SIZE * 7 - 10, Buffer.alloc(5000, 3)],
    [base.size - 100, Buffer.alloc(100, 4)],
  ];
  for (const [off, d] of writes) {
    await ov.write(off, d, false);
    d.copy(expect, off);
  }
  t.ok((await ov.read(0, base.size)).equals(expect), 'whole disk equals base with writes applied');
  t.ok((await ov.read(9990, 330)).equals(expect.subarray(9990, 10320)), 'an unaligned range across a write');
  t.equal(ov.usedBytes, BLOCK_SIZE * (1 + 1 + 3 + 1), 'only touched blocks are allocated');
  await t.rejects(ov.write(base.size - 10, Buffer.alloc(20), false), { code: 'EFBIG' });
});

t.test('writes persist across close and reopen; discard forgets them', async (t) => {
  const dir = tmpdir(t);
  const base = memBase(256 * 1024);
  let ov = await Overlay.open({ dir, name: 'sda', base });
  await ov.write(5000, Buffer.from('hello overlay'), false);
  await ov.close();
  ov = await Overlay.open({ dir, name: 'sda', base });
  t.equal((await ov.read(5000, 13)).toString(), 'hello overlay');
  await ov.close();
  await discardOverlay(dir, 'sda');
  ov = await Overlay.open({ dir, name: 'sda', base });
  t.ok((await ov.read(5000, 13)).equals(base.bytes.subarray(5000, 5013)), 'back to the base');
  await ov.close();
});

t.test('at the limit writes fail with ENOSPC, nothing is half-written, thresholds warn', async (t) => {
  const dir = tmpdir(t);
  const base = memBase(1024 * 1024);
  const warnings: number[] = [];
  const ov = await Overlay.open({ dir, name: 'sda', base, limitBytes: BLOCK_SIZE * 10, onThreshold: (p) => warnings.push(p) });
  for (let i = 0; i < 9; i++) await ov.write(i * BLOCK_SIZE, Buffer.alloc(BLOCK_SIZE, i + 1), true);
  t.same(warnings, [80, 90]);
  const err = await ov.write(9 * BLOCK_SIZE, Buffer.alloc(BLOCK_SIZE * 2, 0xee), true).catch((e: unknown) => e);
  t.ok(err instanceof OverlayError && err.code === 'ENOSPC', 'a write needing two more blocks fails');
  t.ok(
    (await ov.read(9 * BLOCK_SIZE, BLOCK_SIZE * 2)).equals(base.bytes.subarray(9 * BLOCK_SIZE, 11 * BLOCK_SIZE)),
    'the failed write left no trace',
  );
  await ov.write(0, Buffer.alloc(BLOCK_SIZE, 0x55), true);
  t.ok((await ov.read(0, BLOCK_SIZE)).equals(Buffer.alloc(BLOCK_SIZE, 0x55)), 'rewriting an allocated block still works at the limit');
  await ov.write(9 * BLOCK_SIZE, Buffer.alloc(BLOCK_SIZE, 0x66), true);
  t.equal(ov.freeBytes, 0);
  await ov.close();
  const again = await Overlay.open({ dir, name: 'sda', base, limitBytes: BLOCK_SIZE * 10 });
  t.equal(again.usedBytes, BLOCK_SIZE * 10);
  for (let i = 1; i < 9; i++)
    t.ok((await again.read(i * BLOCK_SIZE, BLOCK_SIZE)).equals(Buffer.alloc(BLOCK_SIZE, i + 1)), `block ${i} intact`);
  await again.close();
});

t.test('a torn journal tail is ignored, a corrupt map is refused', async (t) => {
  const dir = tmpdir(t);
  const base = memBase(256 * 1024);
  const files = overlayFiles(dir, 'sda');
  const ov = await Overlay.open({ dir, name: 'sda', base });
  const emptyMap = fs.readFileSync(files.map);
  await ov.write(0, Buffer.alloc(BLOCK_SIZE, 9), true);
  // Simulate a crash: the journal holds the record, plus half a record of garbage.
  fs.appendFileSync(files.journal, Buffer.alloc(10, 0xab));
  const journal = fs.readFileSync(files.journal);
  t.equal(journal.length, 24 + 10);
  const data = fs.readFileSync(files.data);
  await ov.close();
  fs.writeFileSync(files.map, emptyMap);
  fs.writeFileSync(files.journal, journal);
  fs.writeFileSync(files.data, data);
  const re = await Overlay.open({ dir, name: 'sda', base });
  t.ok((await re.read(0, BLOCK_SIZE)).equals(Buffer.alloc(BLOCK_SIZE, 9)));
  await re.close();
  const map = fs.readFileSync(files.map);
  map.writeUInt8(map.readUInt8(map.length - 1) ^ 0xff, map.length - 1);
  fs.writeFileSync(files.map, map);
  await t.rejects(Overlay.open({ dir, name: 'sda', base }), { code: 'EIO', message: /checksum/ });
});

t.test('kill -9 of a writer: every acknowledged sync write survives and the overlay resumes', async (t) => {
  const dir = tmpdir(t);
  const child = spawn(process.execPath, [fileURLToPath(new URL('./fixtures/crash-writer.js', import.meta.url)), dir, 'sync'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  let acked = -1;
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) acked = Number(l.split(' ')[1]);
      if (acked >= 300) {
        child.kill('SIGKILL');
        resolve();
      }
    });
    child.on('exit', (code, sig) => {
      if (sig !== 'SIGKILL') reject(new Error(`writer exited early: ${code}`));
    });
  });
  await new Promise((r) => child.once('exit', r));
  const base = patternBase();
  const ov = await Overlay.open({ dir, name: 'sda', base });
  let bad = 0;
  for (let i = 0; i <= acked; i++) {
    const w = crashWrite(i);
    if (!(await ov.read(w.offset, w.data.length)).equals(w.data)) bad++;
  }
  t.equal(bad, 0, `all ${acked + 1} acknowledged writes present`);
  const untouched = 3999 * 16384 + 8192;
  t.ok((await ov.read(untouched, 4096)).equals(base.bytes.subarray(untouched, untouched + 4096)), 'unwritten blocks still read the base');
  await ov.write(0, Buffer.from('resumed'), true);
  await ov.close();
});

t.test('the disks of a publication share one budget', async (t) => {
  const dir = tmpdir(t);
  const budget = new OverlayBudget(BLOCK_SIZE * 4);
  const a = await Overlay.open({ dir, name: 'sda', base: memBase(1024 * 1024), budget });
  const b = await Overlay.open({ dir, name: 'sdb', base: memBase(1024 * 1024), budget });
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  await a.write(0, Buffer.alloc(BLOCK_SIZE * 3, 1), true);
  t.equal(b.freeBytes, BLOCK_SIZE, 'the other disk sees what is left');
  await t.rejects(b.write(0, Buffer.alloc(BLOCK_SIZE * 2, 2), true), { code: 'ENOSPC' });
  await b.write(0, Buffer.alloc(BLOCK_SIZE, 2), true);
  t.equal(budget.usedBytes, BLOCK_SIZE * 4);
  await t.rejects(a.write(BLOCK_SIZE * 10, Buffer.alloc(1, 3), true), { code: 'ENOSPC' });
});
