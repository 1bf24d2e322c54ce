// VGA text memory: the monitor's `xp` dump parsed, char/attribute pairs decoded
// (CP437), and vgacon's wrap-around copy dropped. Expected bytes are written
// here by hand; the real buffer is one read from a panicked guest kernel.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { projectPath } from '../../src/paths.js';
import { cp437, decodeVgaText, dedupeVgaRows, parseXpBytes, vgaCell, VGA_XP_COMMAND } from '../../src/hypervisor/vga.js';

t.test('xp output parses into bytes, and anything else is an error', async (t) => {
  t.equal(VGA_XP_COMMAND, 'xp /32768xb 0xb8000');
  const out = '00000000000b8000: 0x53 0x07 0x65 0x07 0x61 0x07 0x42 0x07\r\n00000000000b8008: 0x49 0x1f 0xb0 0x4e\r\n';
  t.same([...parseXpBytes(out, 12)], [0x53, 7, 0x65, 7, 0x61, 7, 0x42, 7, 0x49, 0x1f, 0xb0, 0x4e]);
  t.throws(() => parseXpBytes(out, 16), /has 12 of 16 bytes/);
  t.throws(() => parseXpBytes(out, 8), /longer than 8 bytes/);
  t.throws(() => parseXpBytes('Cannot access memory\n', 8), { code: 'VGA_READ_FAILED' });
  t.throws(() => parseXpBytes('00000000000b8010: 0x53 0x07\n', 2), /skips/);
});

t.test('char/attribute pairs decode to CP437 text and colours', async (t) => {
  const buf = new Uint8Array(80 * 2 * 2);
  const put = (i: number, ch: number, attr: number): void => {
    buf[i * 2] = ch;
    buf[i * 2 + 1] = attr;
  };
  for (let i = 0; i < 160; i++) put(i, 0x20, 0x07);
  [...'Oops'].forEach((c, i) => put(i, c.charCodeAt(0), 0x07));
  put(4, 0xc4, 0x1f);
  put(5, 0x82, 0x1f);
  put(6, 0xdb, 0x4e);
  put(7, 0x00, 0x07);
  put(80, 0xc9, 0x07);
  put(81, 0xcd, 0x07);
  put(82, 0xbb, 0x07);
  t.same(decodeVgaText(buf), ['Oops─é█', '╔═╗']);
  t.same(decodeVgaText(buf, 40, 1), ['Oops─é█']);
  t.same(vgaCell(buf, 0, 4), { char: '─', fg: 0xf, bg: 1 });
  t.same(vgaCell(buf, 0, 6), { char: '█', fg: 0xe, bg: 4 });
  t.equal(cp437(0x41), 'A');
  t.equal(cp437(0x0a), ' ');
  t.equal(cp437(0xff), '\u00a0');
  t.throws(() => decodeVgaText(new Uint8Array(10)), { code: 'VGA_READ_FAILED' });
});

t.test('the text memory of a panicked guest holds its panic, its wrap-around copy once', async (t) => {
  const buf = readFileSync(projectPath('test', 'verify', 'fixtures', 'console', 'panic-textmem.bin'));
  t.equal(buf.length, 32768);
  const rows = decodeVgaText(buf);
  t.equal(rows.length, 204);
  t.ok(
    rows.some((l) => /Kernel panic - not syncing: VFS: Unable to mount root fs/.test(l)),
    'the panic line',
  );
  const block = Array.from({ length: 12 }, (_, i) => `line ${i}`);
  t.same(dedupeVgaRows([...block, 'other', ...block]), [...block, 'other'], 'a repeated 12-row block is kept once');
  const loop = Array.from({ length: 30 }, (_, i) => (i % 2 ? 'svc: fatal: cannot start' : 'init: restarting svc'));
  t.same(dedupeVgaRows(loop), loop, 'a crash loop is repetition, not a copy: every row stays');
  t.same(dedupeVgaRows(['a', 'b']), ['a', 'b']);
});
