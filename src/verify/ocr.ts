/**
 * OCR of a screenshot with Debian's tesseract-ocr, run as a CLI with a
 * timeout: the one way to read a console that is not in VGA text mode (a
 * framebuffer console, a graphical boot screen, a Windows stop screen).
 * Tesseract reads printed text of ordinary size; what it cannot see is in
 * docs/surebackup.md ("Console watch").
 */
import { exec, which } from '../host/exec.js';

export type OcrOutcome = { ok: true; text: string } | { ok: false; why: string };

export const OCR_TIMEOUT_MS = 30_000;
/** Tesseract's text for one screen is a few KiB; more is not a console. */
const OCR_MAX_CHARS = 64 * 1024;

export async function ocrText(imagePath: string, o: { timeoutMs?: number } = {}): Promise<OcrOutcome> {
  const bin = which('tesseract');
  if (!bin) return { ok: false, why: 'tesseract is not installed (apt-get install tesseract-ocr)' };
  // One thread: the host's cores belong to the VMs under test.
  const r = await exec(bin, [imagePath, 'stdout', '--psm', '3'], {
    timeoutMs: o.timeoutMs ?? OCR_TIMEOUT_MS,
    env: { ...process.env, OMP_THREAD_LIMIT: '1' },
  });
  if (r.timedOut) return { ok: false, why: `tesseract took longer than ${(o.timeoutMs ?? OCR_TIMEOUT_MS) / 1000} s` };
  if (r.code !== 0) return { ok: false, why: `tesseract failed (exit ${r.code}): ${r.stderr.trim().split('\n').at(-1) ?? ''}` };
  return { ok: true, text: r.stdout.slice(0, OCR_MAX_CHARS) };
}
