// The screenshot verdict at its edges, without OCR or guests: the PPM parser's
// refusals, the blank-screen and blue-screen thresholds, the perceptual hash
// on pictures whose hash is known, and how findings, a blank screen and
// warnings combine. A panic on a screen that is not blank is caught by the
// console findings alone. One of the tests the mutation run uses
// (docs/testing.md); test/verify/screenshot.test.ts reads real screens.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encode } from 'fast-png';
import {
  blueShare,
  dHash,
  hashDistance,
  isBlank,
  parsePpm,
  screenshotTest,
  SCREEN_CHANGE_THRESHOLD,
  vgaText,
  type Ppm,
} from '../../src/verify/screenshot.js';
import { scanConsole } from '../../src/verify/console.js';

const ppmBytes = (
  w: number,
  h: number,
  px: (x: number, y: number) => [number, number, number],
  header = `P6\n${w} ${h}\n255\n`,
): Buffer => {
  const body = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) body.set(px(x, y), (y * w + x) * 3);
  return Buffer.concat([Buffer.from(header), body]);
};
const img = (w: number, h: number, px: (x: number, y: number) => [number, number, number]): Ppm => parsePpm(ppmBytes(w, h, px));

t.test('PPM: the header is checked before the pixels are trusted', async (t) => {
  const p = parsePpm(ppmBytes(2, 1, (x) => [x, 2, 3]));
  t.same([p.width, p.height, [...p.rgb]], [2, 1, [0, 2, 3, 1, 2, 3]]);
  const commented = parsePpm(Buffer.concat([Buffer.from('P6\n# made by QEMU\n2 1\n# max\n255\n'), Buffer.from([1, 2, 3, 4, 5, 6])]));
  t.same([commented.width, commented.height, [...commented.rgb]], [2, 1, [1, 2, 3, 4, 5, 6]], 'comments are skipped');
  t.same([...parsePpm(Buffer.concat([Buffer.from('P6 1\t1  255 '), Buffer.from([9, 8, 7])])).rgb], [9, 8, 7], 'any whitespace separates');
  t.throws(() => parsePpm(Buffer.from('P3\n1 1\n255\n1 2 3')), /not a binary PPM \(P6\)/);
  t.throws(() => parsePpm(Buffer.from('')), /not a binary PPM/);
  t.throws(() => parsePpm(ppmBytes(1, 1, () => [0, 0, 0], 'P6\n0 1\n255\n')), /unsupported PPM header/);
  t.throws(() => parsePpm(ppmBytes(1, 1, () => [0, 0, 0], 'P6\n1 0\n255\n')), /unsupported PPM header/);
  t.throws(() => parsePpm(ppmBytes(1, 1, () => [0, 0, 0], 'P6\n1 1\n65535\n')), /unsupported PPM header/);
  t.throws(() => parsePpm(ppmBytes(1, 1, () => [0, 0, 0], 'P6\nx 1\n255\n')), /unsupported PPM header/);
  t.throws(() => parsePpm(ppmBytes(2, 2, () => [0, 0, 0]).subarray(0, 20)), /truncated PPM/);
});

t.test('blank: every pixel within 8 of the first, in each channel', async (t) => {
  t.equal(isBlank(img(4, 4, () => [10, 20, 30])), true);
  t.equal(isBlank(img(4, 4, (x, y) => (x === 3 && y === 3 ? [18, 28, 38] : [10, 20, 30]))), true, '8 apart: still blank');
  t.equal(isBlank(img(4, 4, (x, y) => (x === 3 && y === 3 ? [19, 20, 30] : [10, 20, 30]))), false, 'red 9 apart');
  t.equal(isBlank(img(4, 4, (x, y) => (x === 3 && y === 3 ? [10, 11, 30] : [10, 20, 30]))), false, 'green 9 apart');
  t.equal(isBlank(img(4, 4, (x, y) => (x === 3 && y === 3 ? [10, 20, 39] : [10, 20, 30]))), false, 'blue 9 apart');
  t.equal(isBlank(img(4, 4, (x, y) => (x === 0 && y === 0 ? [0, 0, 0] : [200, 200, 200]))), false, 'the first pixel differs from the rest');
  t.equal(
    isBlank(
      img(4, 4, (x) => (x === 1 ? [30, 20, 30] : [10, 20, 30])),
      20,
    ),
    true,
    'a wider tolerance',
  );
});

t.test('blue share: clearly blue pixels only', async (t) => {
  t.equal(blueShare(img(2, 2, () => [0, 120, 215])), 1, 'Windows 10 blue');
  t.equal(blueShare(img(2, 2, () => [0, 0, 170])), 1, 'XP blue');
  t.equal(blueShare(img(2, 2, (x, y) => (x + y === 0 ? [0, 0, 170] : [0, 0, 0]))), 0.25);
  t.equal(blueShare(img(1, 1, () => [0, 0, 95])), 0, 'too dark');
  t.equal(blueShare(img(1, 1, () => [0, 0, 96])), 1, 'just bright enough');
  t.equal(blueShare(img(1, 1, () => [60, 0, 100])), 0, 'not 40 over red');
  t.equal(blueShare(img(1, 1, () => [59, 0, 100])), 1);
  t.equal(blueShare(img(1, 1, () => [0, 80, 100])), 0, 'not 20 over green');
  t.equal(blueShare(img(1, 1, () => [0, 79, 100])), 1);
  t.equal(blueShare({ width: 0, height: 0, rgb: new Uint8Array(0) }), 0, 'no pixels');
});

t.test('perceptual hash: a known picture, its negative, and the distance', async (t) => {
  // Brighter to the left: every cell is brighter than its right neighbour, all 256 bits set.
  const falling = {
    width: 34,
    height: 16,
    channels: 3,
    data: ppmBytes(34, 16, (x) => [255 - x * 7, 255 - x * 7, 255 - x * 7]).subarray(13),
  };
  const rising = { width: 34, height: 16, channels: 1, data: Buffer.from(Array.from({ length: 34 * 16 }, (_, i) => (i % 34) * 7)) };
  t.same([...dHash(falling)], new Array(32).fill(0xff));
  t.same([...dHash(rising)], new Array(32).fill(0), 'grey channel, brighter to the right');
  t.equal(hashDistance(dHash(falling), dHash(rising)), 1);
  t.equal(hashDistance(dHash(falling), dHash(falling)), 0);
  t.equal(hashDistance(Uint8Array.from([0b1011, 0]), Uint8Array.from([0, 0])), 3 / 16);
  t.equal(hashDistance(Uint8Array.from([0xff, 0x01]), Uint8Array.from([0xff])), 1 / 16, 'a shorter hash counts as zeros');
  // Weights of the grey: green counts most, blue least. 17 pixels wide: one pixel a cell.
  const two = (a: [number, number, number], b: [number, number, number]) => ({
    width: 17,
    height: 1,
    channels: 3,
    data: Uint8Array.from([...a, ...b, ...new Array(15 * 3).fill(0)]),
  });
  t.equal(dHash(two([100, 0, 0], [0, 0, 0]))[0]! & 1, 1, 'red alone is brighter than black');
  t.equal(dHash(two([0, 0, 100], [0, 0, 0]))[0]! & 1, 1, 'blue alone too');
  t.equal(dHash(two([0, 100, 0], [150, 0, 0]))[0]! & 1, 1, '0.587 of 100 green outweighs 0.299 of 150 red');
  t.equal(dHash(two([0, 0, 250], [100, 0, 0]))[0]! & 1, 0, '0.114 of 250 blue is less than 0.299 of 100 red');
  t.equal(dHash(two([0, 0, 0], [0, 0, 0]))[0]! & 1, 0, 'equal cells: no bit');
  t.equal(SCREEN_CHANGE_THRESHOLD, 0.25);
});

t.test('VGA text: 80 columns a row', async (t) => {
  const b = Buffer.alloc(80 * 2 * 2);
  for (let i = 0; i < 160; i++) {
    b[i * 2] = 0x41 + (i % 26);
    b[i * 2 + 1] = 0x07;
  }
  const rows = vgaText(b).split('\n');
  t.equal(rows.length, 2);
  t.equal(rows[0]!.length, 80);
  t.equal(rows[0]![0], 'A');
  t.equal(rows[1]![0], String.fromCharCode(0x41 + (80 % 26)));
});

t.test('the verdict: findings, then a blank screen, then warnings; a panic on a lit screen fails on the panic alone', async (t) => {
  const dir = t.testdir();
  const file = (name: string, b: Buffer): string => {
    const p = join(dir, name);
    writeFileSync(p, b);
    return p;
  };
  const lit = file(
    'lit.ppm',
    ppmBytes(34, 16, (x, y) => ((x * 3 + y) % 5 === 0 ? [220, 220, 220] : [0, 0, 0])),
  );
  const black = file(
    'black.ppm',
    ppmBytes(34, 16, () => [0, 0, 0]),
  );
  const out = (n: string): string => join(dir, n);

  const ok = screenshotTest(lit, out('ok.png'));
  t.same(ok, { name: 'screenshot', kind: 'screenshot', seconds: ok.seconds, findings: [], result: 'passed', detail: out('ok.png') });
  t.same([...readFileSync(out('ok.png')).subarray(1, 4)], [...Buffer.from('PNG')], 'the PNG is written');
  const blank = screenshotTest(black, out('b.png'));
  t.same([blank.result, blank.detail], ['failed', `blank screen (all pixels about equal); ${out('b.png')}`]);

  // The panic screen here is not blank: without the console finding it would pass.
  const panicLine = '[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)';
  t.equal(isBlank(parsePpm(readFileSync(lit))), false);
  const panic = screenshotTest(lit, out('p.png'), { serialLog: `booting\n${panicLine}\n` });
  t.equal(panic.result, 'failed');
  t.equal(panic.detail, `kernel panic on the serial console: "${panicLine}"; ${out('p.png')}`);
  t.same(
    panic.findings.map((f) => f.kind),
    ['kernel panic'],
  );
  const vga = Buffer.alloc(80 * 25 * 2, 0x20);
  Buffer.from('Kernel panic - not syncing: Attempted to kill init!').forEach((c, i) => {
    vga[i * 2] = c;
  });
  t.match(
    screenshotTest(lit, out('v.png'), { vgaDump: vga }).detail,
    /^kernel panic on the VGA console: "Kernel panic - not syncing: Attempted to kill init!"/,
  );
  const watched = screenshotTest(lit, out('w.png'), { findings: scanConsole('Give root password for maintenance', 'vga') });
  t.match(watched.detail, /^maintenance prompt on the VGA console/);
  t.same(watched.findings, [{ kind: 'maintenance prompt', source: 'vga', line: 'Give root password for maintenance' }]);
  const both = screenshotTest(black, out('bb.png'), { serialLog: panicLine, ocr: { ok: false, why: 'tesseract is not installed' } });
  t.equal(
    both.detail,
    `kernel panic on the serial console: "${panicLine}"; OCR not run: tesseract is not installed; ${out('bb.png')}`,
    'a finding is named before the blank screen',
  );
  const blankNoOcr = screenshotTest(black, out('bn.png'), { ocr: { ok: false, why: 'no tesseract' } });
  t.same(
    [blankNoOcr.result, blankNoOcr.detail],
    ['failed', `blank screen (all pixels about equal); OCR not run: no tesseract; ${out('bn.png')}`],
  );
  const noOcr = screenshotTest(lit, out('n.png'), { ocr: { ok: false, why: 'no tesseract' } });
  t.same([noOcr.result, noOcr.detail], ['warning', `OCR not run: no tesseract; ${out('n.png')}`]);
  const ocrOk = screenshotTest(lit, out('o.png'), { ocr: { ok: true, text: 'web login:' } });
  t.same([ocrOk.result, ocrOk.detail], ['passed', out('o.png')]);
  const ocrPanic = screenshotTest(lit, out('op.png'), { ocr: { ok: true, text: 'x\nKernel panic - not syncing: Fatal exception\n' } });
  t.match(ocrPanic.detail, /^kernel panic on the screen \(OCR\): "Kernel panic - not syncing: Fatal exception"/);
});

t.test('a blue screen: stop words are a stop screen on blue only, and only once', async (t) => {
  const dir = t.testdir();
  const file = (name: string, share: number): string => {
    // `share` of the pixels Windows blue, the rest black.
    const n = 10 * 10;
    const p = join(dir, name);
    writeFileSync(
      p,
      ppmBytes(10, 10, (x, y) => (y * 10 + x < n * share ? [0, 120, 215] : [0, 0, 0])),
    );
    return p;
  };
  const half = file('half.ppm', 0.5),
    less = file('less.ppm', 0.49);
  const out = join(dir, 'x.png');
  const words = { ok: true as const, text: 'Y0ur PC ran int0 a pr0blem\n  we will restart for you  \n' };
  const r = screenshotTest(half, out, { ocr: words });
  t.equal(r.result, 'failed', 'half the screen blue is a blue screen');
  t.same(r.findings, [{ kind: 'stop screen', source: 'ocr', line: 'we will restart for you (on a blue screen)' }]);
  t.equal(screenshotTest(less, out, { ocr: words }).result, 'passed', 'less than half is not');
  t.equal(
    screenshotTest(half, out, { ocr: { ok: true, text: 'all is well' } }).result,
    'passed',
    'blue without stop words is a blue desktop',
  );
  for (const w of ['problem', 'Stop code', 'STOP:', 'restart', 'crash dump', 'physical memory', 'BSOD']) {
    t.equal(screenshotTest(half, out, { ocr: { ok: true, text: `the ${w} here` } }).result, 'failed', w);
  }
  t.equal(screenshotTest(half, out, { ocr: { ok: true, text: 'restarted' } }).result, 'passed', 'whole words only');
  const strong = screenshotTest(half, out, { ocr: { ok: true, text: 'Your PC ran into a problem and needs to restart.' } });
  t.same(
    strong.findings.map((f) => f.line),
    ['Your PC ran into a problem and needs to restart.'],
    'a stop screen the OCR read is not counted twice',
  );
});

t.test("a screen very different from the last passing run warns and names that run's picture", async (t) => {
  const dir = t.testdir();
  const now = join(dir, 'now.ppm');
  writeFileSync(
    now,
    ppmBytes(34, 16, (x) => [255 - x * 7, 255 - x * 7, 255 - x * 7]),
  );
  const png = (name: string, px: (x: number) => number): string => {
    const data = new Uint8Array(34 * 16 * 3);
    for (let i = 0; i < 34 * 16; i++) data.fill(px(i % 34), i * 3, i * 3 + 3);
    const p = join(dir, name);
    writeFileSync(p, encode({ width: 34, height: 16, data, channels: 3, depth: 8 }));
    return p;
  };
  const opposite = png('opposite.png', (x) => x * 7);
  const same = png('same.png', (x) => 255 - x * 7);
  const r = screenshotTest(now, join(dir, 'a.png'), { baseline: { path: opposite, run: 'run-7' } });
  t.same([r.result, r.baseline], ['warning', opposite]);
  t.equal(
    r.detail,
    `the screen changed a lot since run run-7 (perceptual distance 1.00, over 0.25); that run's screen: ${opposite}; ${join(dir, 'a.png')}`,
  );
  const s = screenshotTest(now, join(dir, 'b.png'), { baseline: { path: same, run: 'run-7' } });
  t.same([s.result, 'baseline' in s], ['passed', false]);
  writeFileSync(join(dir, 'junk.png'), 'not a png');
  t.equal(
    screenshotTest(now, join(dir, 'c.png'), { baseline: { path: join(dir, 'junk.png'), run: 'r' } }).result,
    'passed',
    'an unreadable baseline is no reason to warn',
  );
});
