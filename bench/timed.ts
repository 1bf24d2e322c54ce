/** Runs benchmark commands under /usr/bin/time -v: wall time, CPU time and peak RSS of each (bench/repo.ts, bench/s3.ts). */
import { spawn } from 'node:child_process';

export interface Timed {
  code: number | null;
  seconds: number;
  cpuSeconds: number;
  maxRssKiB: number;
  out: string;
}

/** Runs a command under /usr/bin/time -v; returns wall time, CPU time and peak RSS. */
export function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Timed> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const p = spawn('/usr/bin/time', ['-v', cmd, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const keep = (c: Buffer): void => {
      out = (out + c.toString()).slice(-65536);
    };
    p.stdout.on('data', keep);
    p.stderr.on('data', keep);
    p.on('error', reject);
    p.on('close', (code) => {
      const rss = /Maximum resident set size \(kbytes\): (\d+)/.exec(out);
      const cpu = (what: string): number => Number(new RegExp(`${what} time \\(seconds\\): ([\\d.]+)`).exec(out)?.[1] ?? 0);
      resolve({
        code,
        seconds: Number(process.hrtime.bigint() - t0) / 1e9,
        cpuSeconds: cpu('User') + cpu('System'),
        maxRssKiB: rss ? Number(rss[1]) : 0,
        out,
      });
    });
  });
}

export async function must(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<Timed> {
  const r = await timed(cmd, args, env);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.out.slice(-3000)}`);
  return r;
}
