import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { screenshotTest } from '../../src/verify/screenshot.js';

function ppm(w: number, h: number, px: (x: number, y: number) => [number, number, number]): Buffer {
  const body = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) body.set(px(x, y), (y * w + x) * 3);
  return Buffer.concat([Buffer.from(`P6\n${w} ${h}\n255\n`), body]);
}
function vga(text: string): Buffer {
  const b = Buffer.alloc(80 * 25 * 2);
  for (let i = 0; i < 80 * 25; i++) { b[i * 2] = i < text.length ? text.charCodeAt(i) : 32; b[i * 2 + 1] = 0x07; }
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
  t.equal(black.result, 'failed'); t.match(black.detail, /blank/);
  t.equal(screenshotTest(join(dir, 'grey.ppm'), join(dir, 'grey.png')).result, 'failed');
  const ok = screenshotTest(join(dir, 'text.ppm'), join(dir, 'text.png'));
  t.equal(ok.result, 'passed');
  const png = decode(readFileSync(join(dir, 'text.png')));
  t.equal(png.width, 64); t.equal(png.height, 40);
  const panic = screenshotTest(join(dir, 'text.ppm'), join(dir, 'p.png'), { vgaDump: vga(' '.repeat(160) + 'Kernel panic - not syncing: VFS: Unable to mount root fs') });
  t.equal(panic.result, 'failed'); t.match(panic.detail, /Kernel panic - not syncing/);
  const serial = screenshotTest(join(dir, 'text.ppm'), join(dir, 's.png'), { serialLog: '[ 1.0] Kernel panic - not syncing: Attempted to kill init!' });
  t.equal(serial.result, 'failed');
});
