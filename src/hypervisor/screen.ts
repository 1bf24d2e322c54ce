/**
 * Screenshots: QEMU's screendump writes binary PPM (P6); reports want PNG.
 * A VGA screen is at most a few MiB, so it is converted in memory.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { encode } from 'fast-png';

/** Parses a P6 header: magic, width, height, maxval, each separated by whitespace (comments allowed). */
export function parsePpm(buf: Buffer): { width: number; height: number; data: Uint8Array } {
  if (buf.subarray(0, 2).toString('latin1') !== 'P6') throw new Error('not a binary PPM (P6) image');
  const fields: number[] = [];
  let i = 2;
  while (fields.length < 3) {
    const c = buf[i];
    if (c === undefined) throw new Error('truncated PPM header');
    if (c === 0x23) {
      while (buf[i] !== undefined && buf[i] !== 0x0a) i++;
    } else if (c >= 0x30 && c <= 0x39) {
      let n = 0;
      while ((buf[i] ?? 0) >= 0x30 && (buf[i] ?? 0) <= 0x39) n = n * 10 + ((buf[i++] as number) - 0x30);
      fields.push(n);
      continue;
    }
    i++;
  }
  const [width, height, maxval] = fields as [number, number, number];
  if (maxval !== 255) throw new Error(`PPM maxval ${maxval} is not supported (only 255)`);
  const start = i + 1; // exactly one whitespace byte after maxval
  const data = buf.subarray(start, start + width * height * 3);
  if (data.length !== width * height * 3) throw new Error('truncated PPM pixel data');
  return { width, height, data };
}

export function ppmToPng(ppmPath: string, pngPath: string): void {
  const img = parsePpm(readFileSync(ppmPath));
  writeFileSync(pngPath, encode({ width: img.width, height: img.height, data: img.data, channels: 3, depth: 8 }));
}
