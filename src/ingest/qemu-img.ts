/**
 * What we ask qemu-img: the backing chain of an image (`info`) and where its
 * data lies (`map`). `map` output is read line by line as qemu-img writes it
 * (one extent per line), so memory stays bounded on images with millions of
 * extents.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { exec, which } from '../host/exec.js';
import { missingComponent } from '../errors.js';

/** One layer of `qemu-img info --backing-chain --output=json`, the fields we use. */
export interface ImageLayer {
  filename: string;
  format: string;
  'virtual-size': number;
  'full-backing-filename'?: string;
  'backing-filename'?: string;
  'format-specific'?: { type: string; data?: Record<string, unknown> };
}

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  /** Host offset inside the file of layer `depth`, when the format maps 1:1 to it. */
  offset?: number;
}

export function qemuImg(): string {
  const bin = which('qemu-img');
  if (!bin) throw missingComponent('qemu-img', 'install it: apt-get install qemu-utils');
  return bin;
}

export interface InfoResult {
  ok: boolean;
  chain: ImageLayer[];
  stderr: string;
}

/** `qemu-img info --backing-chain`; top layer first. Never throws for qemu's own errors. */
export async function imageInfo(path: string, format?: string): Promise<InfoResult> {
  const args = ['info', '--output=json', '--backing-chain', ...(format ? ['-f', format] : []), path];
  const r = await exec(qemuImg(), args, { timeoutMs: 60_000 });
  if (r.code !== 0) return { ok: false, chain: [], stderr: r.stderr.trim() || `qemu-img exited with ${r.code ?? r.signal}` };
  const parsed = JSON.parse(r.stdout) as ImageLayer[] | ImageLayer;
  return { ok: true, chain: Array.isArray(parsed) ? parsed : [parsed], stderr: r.stderr.trim() };
}

export interface CheckResult {
  /** qemu-img check exit code: 0 clean, 1 check failed to run, 2 corruptions, 3 leaks only. */
  code: number | null;
  corruptions: number;
  imageEndOffset: number | undefined;
  stderr: string;
}

/** `qemu-img check` of one layer alone (metadata only: L1/L2/refcount tables, no guest data). */
export async function checkImage(path: string, format: string): Promise<CheckResult> {
  const r = await exec(qemuImg(), ['check', '--output=json', '-f', format, path], { timeoutMs: 10 * 60_000 });
  let parsed: { corruptions?: number; 'image-end-offset'?: number } = {};
  try {
    parsed = JSON.parse(r.stdout) as typeof parsed;
  } catch {
    // no JSON when the image cannot be opened at all; stderr says why
  }
  return { code: r.code, corruptions: parsed.corruptions ?? 0, imageEndOffset: parsed['image-end-offset'], stderr: r.stderr.trim() };
}

/**
 * Streams `qemu-img map --output=json`. Stopping the iteration early kills
 * qemu-img. A failing qemu-img raises an error carrying its stderr.
 */
export async function* mapImage(path: string, format: string): AsyncGenerator<MapEntry> {
  const child = spawn(qemuImg(), ['map', '--output=json', '-f', format, path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const spawnError = new Promise<Error>((resolve) => child.on('error', resolve));
  let finished = false;
  try {
    const lines = createInterface({ input: child.stdout, crlfDelay: Infinity });
    for await (const raw of lines) {
      let line = raw.trim();
      if (line.startsWith('[')) line = line.slice(1);
      if (line.endsWith(',') || line.endsWith(']')) line = line.slice(0, -1);
      if (line === '') continue;
      yield JSON.parse(line) as MapEntry;
    }
    const code = await Promise.race([
      exited,
      spawnError.then((e) => {
        throw e;
      }),
    ]);
    finished = true;
    if (code !== 0) throw new Error(`qemu-img map failed (exit ${code}): ${stderr.trim()}`);
  } finally {
    if (!finished) child.kill('SIGKILL');
  }
}
