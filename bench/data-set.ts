/**
 * The generated disks the benchmarks back up (bench/repo.ts, bench/s3.ts): 1 MiB blocks of three kinds in about
 * equal parts (incompressible, log-like text, zeros), chosen by a seeded generator so a run can be repeated.
 */
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';

export const MiB = 1024 * 1024;

/** Deterministic-enough pseudo-random choice without keeping state in files. */
export function lcg(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x;
  };
}

/** 1 MiB of web-server log lines, different for each `i`: compresses about 10:1, like real logs. */
export function textBlock(i: number): Buffer {
  const line = `${new Date(1_700_000_000_000 + i * 1000).toISOString()} web[${i % 977}]: GET /api/items/${i % 4099} 200 ${i % 1500}ms\n`;
  return Buffer.from(line.repeat(Math.ceil(MiB / line.length))).subarray(0, MiB);
}

/**
 * Sizes `path` to `sizeMiB` and fills its 1 MiB blocks from `fromMiB` up to seven eighths of the size with
 * random, text and zero blocks; the last eighth stays a hole (free space that was never written).
 * Bytes before `fromMiB` are kept (bench/repo.ts puts a built guest there).
 */
export async function writeMixedBlocks(path: string, opts: { sizeMiB: number; fromMiB?: number; seed: number }): Promise<void> {
  // Without a start the file is new; with one, what lies before it must survive.
  const fh = await open(path, opts.fromMiB ? 'r+' : 'w');
  try {
    await fh.truncate(opts.sizeMiB * MiB);
    const next = lcg(opts.seed);
    for (let mb = opts.fromMiB ?? 0; mb < Math.floor((opts.sizeMiB * 7) / 8); mb++) {
      const kind = next() % 3;
      const block = kind === 0 ? randomBytes(MiB) : kind === 1 ? textBlock(mb) : Buffer.alloc(MiB);
      await fh.write(block, 0, MiB, mb * MiB);
    }
  } finally {
    await fh.close();
  }
}

export const fmt = (n: number, d = 2): string => n.toFixed(d);
export const mib = (b: number): string => `${fmt(b / MiB, 1)} MiB`;
