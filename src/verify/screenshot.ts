/**
 * The screenshot test: a QMP screendump (PPM, P6) is turned into PNG
 * in-process and judged with what the console watch (src/verify/console.ts)
 * found during the run:
 * - failed: a console finding (panic, Oops, emergency mode, crash loop, a
 *   stop screen ...) on the serial log, the VGA text buffer or the OCR text
 *   of this screen; or a blank screen (all pixels about equal);
 * - warning: the screen looks very different from the VM's screenshot of its
 *   last passing run (perceptual hash distance), or OCR could not run;
 * - passed otherwise.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { decode, encode } from 'fast-png';
import type { TestResult } from './contract.js';
import { decodeVgaText, dedupeVgaRows } from '../hypervisor/vga.js';
import { describeFindings, scanConsole, type ConsoleFinding } from './console.js';
import type { OcrOutcome } from './ocr.js';

export interface Ppm {
  width: number;
  height: number;
  rgb: Uint8Array;
}

export function parsePpm(buf: Uint8Array): Ppm {
  let pos = 0;
  const token = (): string => {
    for (;;) {
      while (pos < buf.length && /\s/.test(String.fromCharCode(buf[pos]!))) pos++;
      if (buf[pos] === 0x23) {
        while (pos < buf.length && buf[pos] !== 0x0a) pos++;
        continue;
      }
      break;
    }
    const s = pos;
    while (pos < buf.length && !/\s/.test(String.fromCharCode(buf[pos]!))) pos++;
    return Buffer.from(buf.subarray(s, pos)).toString('latin1');
  };
  if (token() !== 'P6') throw new Error('not a binary PPM (P6)');
  const width = Number(token());
  const height = Number(token());
  const max = Number(token());
  if (!(width > 0 && height > 0) || max !== 255) throw new Error('unsupported PPM header');
  pos++; // single whitespace after maxval
  const rgb = buf.subarray(pos, pos + width * height * 3);
  if (rgb.length !== width * height * 3) throw new Error('truncated PPM');
  return { width, height, rgb };
}

/** True when every pixel is within `tolerance` of the first: a black or blank screen. */
export function isBlank(p: Ppm, tolerance = 8): boolean {
  const r0 = p.rgb[0]!,
    g0 = p.rgb[1]!,
    b0 = p.rgb[2]!;
  for (let i = 0; i < p.rgb.length; i += 3) {
    if (Math.abs(p.rgb[i]! - r0) > tolerance || Math.abs(p.rgb[i + 1]! - g0) > tolerance || Math.abs(p.rgb[i + 2]! - b0) > tolerance)
      return false;
  }
  return true;
}

/** Text of VGA text memory, 80 columns a row (even bytes are characters in CP437, odd are attributes). */
export function vgaText(buf: Uint8Array): string {
  return decodeVgaText(buf).join('\n');
}

/**
 * Share of clearly blue pixels: a Windows stop screen is blue (#0000AA up to
 * XP, #0078D7 from Windows 8), a Linux console is not.
 */
export function blueShare(p: Ppm): number {
  let blue = 0;
  const n = p.width * p.height;
  for (let i = 0; i < n * 3; i += 3) {
    const r = p.rgb[i]!,
      g = p.rgb[i + 1]!,
      b = p.rgb[i + 2]!;
    if (b >= 96 && b > r + 40 && b > g + 20) blue++;
  }
  return n === 0 ? 0 : blue / n;
}
const BLUE_SCREEN_SHARE = 0.5;
/**
 * Words of a stop screen that OCR of a blue screen reads even when the strong
 * phrases come out garbled. "STOP:" ends in a colon, so no word boundary
 * after it: followed by a space it would never match.
 */
const STOP_WORDS = /\b(?:problem|stop code|restart|crash dump|physical memory|BSOD)\b|\bSTOP:/i;

export interface RasterImage {
  width: number;
  height: number;
  data: ArrayLike<number>;
  channels: number;
}

const HASH_W = 16,
  HASH_H = 16;
/**
 * Difference hash (dHash) of a downscaled greyscale: the image is averaged
 * down to 17x16 cells, and each bit says whether a cell is brighter than its
 * right neighbour. 256 bits; near-identical screens differ in few bits,
 * different screens in about half.
 */
export function dHash(img: RasterImage): Uint8Array {
  const gw = HASH_W + 1;
  const sum = new Float64Array(gw * HASH_H);
  const cnt = new Uint32Array(gw * HASH_H);
  const ch = img.channels;
  for (let y = 0; y < img.height; y++) {
    const cy = Math.min(HASH_H - 1, Math.floor((y * HASH_H) / img.height));
    for (let x = 0; x < img.width; x++) {
      const cx = Math.min(gw - 1, Math.floor((x * gw) / img.width));
      const i = (y * img.width + x) * ch;
      const grey = ch >= 3 ? 0.299 * img.data[i]! + 0.587 * img.data[i + 1]! + 0.114 * img.data[i + 2]! : img.data[i]!;
      sum[cy * gw + cx]! += grey;
      cnt[cy * gw + cx]!++;
    }
  }
  const bits = new Uint8Array((HASH_W * HASH_H) / 8);
  for (let y = 0; y < HASH_H; y++) {
    for (let x = 0; x < HASH_W; x++) {
      const a = sum[y * gw + x]! / Math.max(1, cnt[y * gw + x]!);
      const b = sum[y * gw + x + 1]! / Math.max(1, cnt[y * gw + x + 1]!);
      const bit = y * HASH_W + x;
      if (a > b) bits[bit >> 3]! |= 1 << (bit & 7);
    }
  }
  return bits;
}

/** Share of differing bits between two hashes (0 = same picture, about 0.5 = unrelated). */
export function hashDistance(a: Uint8Array, b: Uint8Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) {
    let x = (a[i]! ^ (b[i] ?? 0)) & 0xff;
    while (x) {
      d += x & 1;
      x >>= 1;
    }
  }
  return d / (a.length * 8);
}

/** Above this distance from the last passing run's screenshot, the screen "changed a lot" (a warning). */
export const SCREEN_CHANGE_THRESHOLD = 0.25;

export interface ScreenBaseline {
  /** PNG of the VM's console in its last passing run. */
  path: string;
  /** That run's id, for the report. */
  run: string;
}

export interface ScreenshotExtra {
  /** A VGA text buffer (tests and callers without a watch). */
  vgaDump?: Uint8Array;
  serialLog?: string;
  /** What the console watch found during the run. */
  findings?: ConsoleFinding[];
  /** OCR of this screen, when it ran; absent means OCR was not asked for. */
  ocr?: OcrOutcome;
  baseline?: ScreenBaseline;
}

export function screenshotTest(ppmPath: string, pngPath: string, extra: ScreenshotExtra = {}): TestResult & { findings: ConsoleFinding[] } {
  const t0 = Date.now();
  const ppm = parsePpm(readFileSync(ppmPath));
  writeFileSync(pngPath, encode({ width: ppm.width, height: ppm.height, data: ppm.rgb, channels: 3, depth: 8 }));
  const findings = [...(extra.findings ?? [])];
  if (extra.vgaDump) findings.push(...scanConsole(dedupeVgaRows(decodeVgaText(extra.vgaDump)), 'vga'));
  if (extra.serialLog) findings.push(...scanConsole(extra.serialLog, 'serial'));
  if (extra.ocr?.ok) {
    const ocrFound = scanConsole(extra.ocr.text, 'ocr');
    findings.push(...ocrFound);
    if (!ocrFound.some((f) => f.kind === 'stop screen') && blueShare(ppm) >= BLUE_SCREEN_SHARE) {
      const line = extra.ocr.text.split('\n').find((l) => STOP_WORDS.test(l));
      if (line !== undefined) findings.push({ kind: 'stop screen', source: 'ocr', line: `${line.trim()} (on a blue screen)` });
    }
  }
  const warnings: string[] = [];
  if (extra.ocr && !extra.ocr.ok) warnings.push(`OCR not run: ${extra.ocr.why}`);
  let baseline: string | undefined;
  if (extra.baseline) {
    const change = screenChange(ppm, extra.baseline);
    if (change !== undefined && change.distance > SCREEN_CHANGE_THRESHOLD) {
      baseline = extra.baseline.path;
      warnings.push(
        `the screen changed a lot since run ${extra.baseline.run} (perceptual distance ${change.distance.toFixed(2)}, over ${SCREEN_CHANGE_THRESHOLD}); that run's screen: ${extra.baseline.path}`,
      );
    }
  }
  const seconds = (Date.now() - t0) / 1000;
  const base = { name: 'screenshot', kind: 'screenshot', seconds, findings, ...(baseline === undefined ? {} : { baseline }) };
  const tail = [...warnings, pngPath].join('; ');
  if (findings.length > 0) return { ...base, result: 'failed', detail: `${describeFindings(findings)}; ${tail}` };
  if (isBlank(ppm)) return { ...base, result: 'failed', detail: `blank screen (all pixels about equal); ${tail}` };
  if (warnings.length > 0) return { ...base, result: 'warning', detail: tail };
  return { ...base, result: 'passed', detail: pngPath };
}

/** Distance to the baseline PNG; undefined when it is gone or unreadable (a pruned run is no reason to warn). */
function screenChange(ppm: Ppm, b: ScreenBaseline): { distance: number } | undefined {
  let old: RasterImage;
  try {
    old = decode(readFileSync(b.path));
  } catch {
    return undefined;
  }
  return { distance: hashDistance(dHash({ width: ppm.width, height: ppm.height, data: ppm.rgb, channels: 3 }), dHash(old)) };
}
