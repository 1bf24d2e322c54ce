import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { blueShare, dHash, hashDistance, parsePpm, screenshotTest, SCREEN_CHANGE_THRESHOLD } from '../../src/verify/screenshot.js';
import { ocrText } from '../../src/verify/ocr.js';
import { scanConsole } from '../../src/verify/console.js';
import { which } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';

const fixture = (n: string): string => projectPath('test', 'verify', 'fixtures', 'console', n);

function ppm(w: number, h: number, px: (x: number, y: number) => [number, number, number]): Buffer {
  const body = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) body.set(px(x, y), (y * w + x) * 3);
  return Buffer.concat([Buffer.from(`P6\n${w} ${h}\n255\n`), body]);
}
function vga(text: string): Buffer {
  const b = Buffer.alloc(80 * 25 * 2);
  for (let i = 0; i < 80 * 25; i++) {
    b[i * 2] = i < text.length ? text.charCodeAt(i) : 32;
    b[i * 2 + 1] = 0x07;
  }
  return b;
}

t.test('black, grey, text and panic screens', async (t) => {
  const dir = t.testdir();
  const cases: [string, Buffer][] = [
    ['black', ppm(64, 40, () => [0, 0, 0])],
    ['grey', ppm(64, 40, () => [128, 128, 130])],
    ['text', ppm(64, 40, (x, y) => ((x * 7 + y * 3) % 11 < 2 ? [200, 200, 200] : [0, 0, 0]))],
  ];
  for (const [name, buf] of cases) writeFileSync(join(dir, `${name}.ppm`), buf);
  const black = screenshotTest(join(dir, 'black.ppm'), join(dir, 'black.png'));
  t.equal(black.result, 'failed');
  t.match(black.detail, /blank/);
  t.equal(screenshotTest(join(dir, 'grey.ppm'), join(dir, 'grey.png')).result, 'failed');
  const ok = screenshotTest(join(dir, 'text.ppm'), join(dir, 'text.png'));
  t.equal(ok.result, 'passed');
  const png = decode(readFileSync(join(dir, 'text.png')));
  t.equal(png.width, 64);
  t.equal(png.height, 40);
  const panic = screenshotTest(join(dir, 'text.ppm'), join(dir, 'p.png'), {
    vgaDump: vga(' '.repeat(160) + 'Kernel panic - not syncing: VFS: Unable to mount root fs'),
  });
  t.equal(panic.result, 'failed');
  t.match(panic.detail, /Kernel panic - not syncing/);
  const serial = screenshotTest(join(dir, 'text.ppm'), join(dir, 's.png'), {
    serialLog: '[ 1.0] Kernel panic - not syncing: Attempted to kill init!',
  });
  t.equal(serial.result, 'failed');
  t.match(
    serial.detail,
    /^kernel panic on the serial console: "\[ 1\.0\] Kernel panic - not syncing: Attempted to kill init!"/,
    'the line is quoted',
  );
  const watched = screenshotTest(join(dir, 'text.ppm'), join(dir, 'w.png'), {
    findings: scanConsole('a: fatal: x\na: fatal: x\na: fatal: x', 'serial'),
  });
  t.equal(watched.result, 'failed');
  t.match(watched.detail, /^crash loop on the serial console: "a: fatal: x" \(3 times\)/);
});

t.test('perceptual hash: two real console screenshots', async (t) => {
  const hash = (n: string) => dHash(decode(readFileSync(fixture(n))));
  const [booting, panicA, panicB] = [hash('booting.png'), hash('panic-a.png'), hash('panic-b.png')];
  t.equal(booting.length, 32, '256 bits');
  t.equal(hashDistance(panicA, panicB), 0, 'the same panic screen a second later');
  const d = hashDistance(booting, panicA);
  t.ok(d > SCREEN_CHANGE_THRESHOLD && d < 0.6, `a boot screen and a panic screen are far apart (${d})`);
  t.equal(hashDistance(booting, panicA), hashDistance(panicA, booting));
});

t.test("a large change from the last passing run is a warning carrying that run's picture", async (t) => {
  const dir = t.testdir();
  const asPpm = (n: string): string => {
    const img = decode(readFileSync(fixture(n)));
    const rgb = Buffer.alloc(img.width * img.height * 3);
    for (let i = 0; i < img.width * img.height; i++) for (let c = 0; c < 3; c++) rgb[i * 3 + c] = img.data[i * img.channels + c]!;
    const p = join(dir, `${n}.ppm`);
    writeFileSync(p, Buffer.concat([Buffer.from(`P6\n${img.width} ${img.height}\n255\n`), rgb]));
    return p;
  };
  const changed = screenshotTest(asPpm('booting.png'), join(dir, 'now.png'), { baseline: { path: fixture('panic-a.png'), run: 'run-1' } });
  t.equal(changed.result, 'warning');
  t.equal(changed.baseline, fixture('panic-a.png'));
  t.match(changed.detail, /the screen changed a lot since run run-1 \(perceptual distance 0\.\d\d/);
  const same = screenshotTest(asPpm('panic-b.png'), join(dir, 'same.png'), { baseline: { path: fixture('panic-a.png'), run: 'run-1' } });
  t.equal(same.result, 'passed');
  t.equal(same.baseline, undefined);
  const gone = screenshotTest(asPpm('booting.png'), join(dir, 'gone.png'), { baseline: { path: join(dir, 'pruned.png'), run: 'run-0' } });
  t.equal(gone.result, 'passed', 'a baseline whose file is gone is no reason to warn');
  const noOcr = screenshotTest(asPpm('booting.png'), join(dir, 'n.png'), {
    ocr: { ok: false, why: 'tesseract is not installed (apt-get install tesseract-ocr)' },
  });
  t.equal(noOcr.result, 'warning');
  t.match(noOcr.detail, /OCR not run: tesseract is not installed/);
});

t.test('OCR reads a real panic screen; a blue screen with stop words is a stop screen', async (t) => {
  t.ok(which('tesseract'), 'tesseract is installed (apt-get install tesseract-ocr)');
  const r = await ocrText(fixture('panic-a.png'));
  t.ok(r.ok, r.ok ? 'OCR ran' : r.why);
  if (r.ok)
    t.same(
      scanConsole(r.text, 'ocr')
        .map((f) => f.kind)
        .filter((k) => k === 'kernel panic')
        .slice(0, 1),
      ['kernel panic'],
      'the panic is read off the picture',
    );
  const dir = t.testdir();
  writeFileSync(
    join(dir, 'blue.ppm'),
    ppm(64, 40, (x, y) => ((x + y) % 9 === 0 ? [255, 255, 255] : [0, 120, 215])),
  );
  t.ok(blueShare(parsePpm(readFileSync(join(dir, 'blue.ppm')))) > 0.8);
  const bsod = screenshotTest(join(dir, 'blue.ppm'), join(dir, 'b.png'), {
    ocr: { ok: true, text: ':(\nYour device needs to restart.\nStop code: CRITICAL PROCESS DIED\n' },
  });
  t.equal(bsod.result, 'failed');
  t.match(bsod.detail, /^stop screen on the screen \(OCR\): "Stop code: CRITICAL PROCESS DIED"/);
  const garbled = screenshotTest(join(dir, 'blue.ppm'), join(dir, 'g.png'), {
    ocr: { ok: true, text: 'Y0ur PC ran int0 a pr0blem\nwe will restart for you' },
  });
  t.equal(garbled.result, 'failed');
  t.match(garbled.detail, /stop screen .*"we will restart for you \(on a blue screen\)"/);
  const grey = screenshotTest(join(dir, 'blue.ppm'), join(dir, 'x.png'), { ocr: { ok: true, text: 'restart the service' } });
  t.equal(grey.result, 'failed', 'on blue, stop words are enough');
  writeFileSync(
    join(dir, 'dark.ppm'),
    ppm(64, 40, (x, y) => ((x + y) % 9 === 0 ? [255, 255, 255] : [0, 0, 0])),
  );
  t.equal(
    screenshotTest(join(dir, 'dark.ppm'), join(dir, 'd.png'), { ocr: { ok: true, text: 'restart the service' } }).result,
    'passed',
    'not on a dark console',
  );
});
