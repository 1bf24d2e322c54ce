/** Network namespaces as the host shows them (`ip netns`), for code that checks records against reality. */
import { exec, which } from './exec.js';

/** The names of every named network namespace; empty when iproute2 is missing. */
export async function listNetns(): Promise<string[]> {
  if (!which('ip')) return [];
  const r = await exec('ip', ['netns', 'list'], { timeoutMs: 5000 });
  // Lines are `name` or `name (id: N)`.
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(' ')[0] ?? '')
    .filter(Boolean);
}

/** The processes running in namespace `ns` (empty when it is gone). */
export async function netnsPids(ns: string): Promise<number[]> {
  const r = await exec('ip', ['netns', 'pids', ns], { timeoutMs: 5000 });
  return r.stdout
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .filter((n) => Number.isInteger(n) && n > 0);
}
