/**
 * Evidence of a bring-up: what a person needs to see why a restore point did
 * not come up, kept where teardown does not reach it (a session's work
 * directory, a SureBackup run's directory). The driver's own copies live in
 * the domain's directory, which `destroy` deletes, so they are copied out
 * before the domain goes.
 *
 * - The serial console log: its last CONSOLE_KEEP_BYTES (a guest that
 *   floods its console must not fill the host's disk through us).
 * - The last screen, as PNG (QMP screendump; only while QEMU still runs).
 */
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { encode } from 'fast-png';
import type { Domain } from '../hypervisor/types.js';
import { parsePpm } from '../verify/screenshot.js';

export const CONSOLE_KEEP_BYTES = 1024 * 1024;

/** Paths of what was kept; a field is absent when there was nothing to keep. */
export interface KeptEvidence {
  console?: string;
  screenshot?: string;
}

/** Where to keep it (absolute paths); without `screenshot` no screen is taken. */
export interface EvidencePaths {
  console: string;
  screenshot?: string;
}

/** The last `bytes` of `src` into `dst` (mode 0600: a console can show secrets). */
export function copyTail(src: string, dst: string, bytes = CONSOLE_KEEP_BYTES): void {
  const fd = openSync(src, 'r');
  try {
    const size = fstatSync(fd).size;
    const len = Math.min(size, bytes);
    const buf = Buffer.alloc(len);
    let got = 0;
    while (got < len) {
      const n = readSync(fd, buf, got, len - got, size - len + got);
      if (n === 0) break;
      got += n;
    }
    mkdirSync(dirname(dst), { recursive: true });
    writeFileSync(dst, buf.subarray(0, got), { mode: 0o600 });
  } finally {
    closeSync(fd);
  }
}

/**
 * Copies the domain's console log and, when asked, its screen. Never throws:
 * evidence is best effort and must not hide the failure it documents; what
 * could not be kept is simply absent from the result.
 */
export async function keepEvidence(domain: Domain, to: EvidencePaths): Promise<KeptEvidence> {
  const kept: KeptEvidence = {};
  try {
    if (existsSync(domain.consoleLog)) {
      copyTail(domain.consoleLog, to.console);
      kept.console = to.console;
    }
  } catch {
    // a console log that vanished or cannot be read leaves no copy
  }
  if (to.screenshot) {
    const png = to.screenshot;
    const raw = `${png}.dump`;
    try {
      mkdirSync(dirname(png), { recursive: true });
      const format = await domain.screendump(raw);
      const bytes = readFileSync(raw);
      if (format === 'png') writeFileSync(png, bytes, { mode: 0o600 });
      else {
        const ppm = parsePpm(bytes);
        writeFileSync(png, encode({ width: ppm.width, height: ppm.height, data: ppm.rgb, channels: 3, depth: 8 }), { mode: 0o600 });
      }
      kept.screenshot = png;
    } catch {
      // QEMU already gone (crashed, killed): there is no screen to take
    } finally {
      rmSync(raw, { force: true });
    }
  }
  return kept;
}

/** "its serial console is kept in X, its last screen in Y", or undefined when nothing was kept. */
export function describeEvidence(kept: KeptEvidence): string | undefined {
  const parts = [
    ...(kept.console ? [`its serial console is kept in ${kept.console}`] : []),
    ...(kept.screenshot ? [`its last screen in ${kept.screenshot}`] : []),
  ];
  return parts.length ? parts.join(', ') : undefined;
}
