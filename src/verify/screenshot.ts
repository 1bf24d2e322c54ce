/**
 * Test kinds (src/verify): each returns a TestResult. The screenshot test turns
 * a QMP screendump (PPM, P6) into PNG in-process and judges it: a screen whose
 * pixels are all about equal is blank/black (failed); a kernel panic is found
 * in the VGA text buffer (80x25 char/attr pairs pmemsave'd from 0xB8000, which
 * reads the console text without OCR) or in the serial log.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { encode } from 'fast-png';
import type { TestResult } from '../surebackup/runner.js';

export interface Ppm { width: number; height: number; rgb: Uint8Array }

export function parsePpm(buf: Uint8Array): Ppm {
  let pos = 0;
  const token = (): string => {
    for (;;) {
      while (pos < buf.length && /\s/.test(String.fromCharCode(buf[pos]!))) pos++;
      if (buf[pos] === 0x23) { while (pos < buf.length && buf[pos] !== 0x0a) pos++; continue; }
      break;
    }
    const s = pos;
    while (pos < buf.length && !/\s/.test(String.fromCharCode(buf[pos]!))) pos++;
    return Buffer.from(buf.subarray(s, pos)).toString('latin1');
  };
  if (token() !== 'P6') throw new Error('not a binary PPM (P6)');
  const width = Number(token()); const height = Number(token()); const max = Number(token());
  if (!(width > 0 && height > 0) || max !== 255) throw new Error('unsupported PPM header');
  pos++; // single whitespace after maxval
  const rgb = buf.subarray(pos, pos + width * height * 3);
  if (rgb.length !== width * height * 3) throw new Error('truncated PPM');
  return { width, height, rgb };
}

/** True when every pixel is within `tolerance` of the first: a black or blank screen. */
export function isBlank(p: Ppm, tolerance = 8): boolean {
  const r0 = p.rgb[0]!, g0 = p.rgb[1]!, b0 = p.rgb[2]!;
  for (let i = 0; i < p.rgb.length; i += 3) {
    if (Math.abs(p.rgb[i]! - r0) > tolerance || Math.abs(p.rgb[i + 1]! - g0) > tolerance || Math.abs(p.rgb[i + 2]! - b0) > tolerance) return false;
  }
  return true;
}

/** Text of an 80x25 VGA text buffer (even bytes are characters, odd are attributes). */
export function vgaText(buf: Uint8Array, cols = 80, rows = 25): string {
  const lines: string[] = [];
  for (let r = 0; r < rows; r++) {
    let line = '';
    for (let c = 0; c < cols; c++) { const ch = buf[(r * cols + c) * 2] ?? 32; line += ch >= 32 && ch < 127 ? String.fromCharCode(ch) : ' '; }
    lines.push(line.trimEnd());
  }
  return lines.join('\n');
}

const PANIC = /Kernel panic/;

export function screenshotTest(ppmPath: string, pngPath: string, extra: { vgaDump?: Uint8Array; serialLog?: string } = {}): TestResult {
  const t0 = Date.now();
  const ppm = parsePpm(readFileSync(ppmPath));
  writeFileSync(pngPath, encode({ width: ppm.width, height: ppm.height, data: ppm.rgb, channels: 3, depth: 8 }));
  const text = [extra.vgaDump ? vgaText(extra.vgaDump) : '', extra.serialLog ?? ''].join('\n');
  const panic = PANIC.exec(text);
  const seconds = (Date.now() - t0) / 1000;
  const base = { name: 'screenshot', kind: 'screenshot', seconds };
  if (panic) {
    const line = text.split('\n').find((l) => PANIC.test(l))?.trim() ?? 'Kernel panic';
    return { ...base, result: 'failed', detail: `kernel panic on console: ${line}; ${pngPath}` };
  }
  if (isBlank(ppm)) return { ...base, result: 'failed', detail: `blank screen (all pixels about equal); ${pngPath}` };
  return { ...base, result: 'passed', detail: pngPath };
}
