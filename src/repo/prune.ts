/**
 * Retention: which restore points to keep, like restic's `forget` and PBS's
 * prune. Points are grouped by VM name and sorted newest first; each rule
 * walks the group independently and keeps the newest point of each of its
 * first N distinct periods (UTC). A point is kept if any rule keeps it.
 * Prune deletes manifests only; gc frees the data.
 */
import type { RestorePoint } from './contract.js';
import { badInput } from '../errors.js';
import type { LockHolder, RepositoryMaintenance } from './api.js';

export interface PrunePolicy {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
}

export interface PruneOptions extends PrunePolicy {
  /** Only this VM's points. */
  vm?: string;
  dryRun?: boolean;
}

export interface PruneDecision {
  id: string;
  vm: string;
  time: string;
  /** Why it is kept (e.g. "last 1", "daily 2026-11-25"); empty for removed points. */
  reasons: string[];
}

export interface PruneReport {
  dryRun: boolean;
  kept: PruneDecision[];
  removed: PruneDecision[];
  /** Lock files of dead processes found and removed when prune took its lock. */
  staleLocksRemoved: LockHolder[];
}

const pad = (n: number): string => String(n).padStart(2, '0');

/** ISO 8601 week, e.g. "2026-W48". */
function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${pad(week)}`;
}

const RULES: { key: keyof PrunePolicy; name: string; bucket: (d: Date) => string }[] = [
  { key: 'keepHourly', name: 'hourly', bucket: (d) => `${d.toISOString().slice(0, 13)}h` },
  { key: 'keepDaily', name: 'daily', bucket: (d) => d.toISOString().slice(0, 10) },
  { key: 'keepWeekly', name: 'weekly', bucket: isoWeek },
  { key: 'keepMonthly', name: 'monthly', bucket: (d) => d.toISOString().slice(0, 7) },
  { key: 'keepYearly', name: 'yearly', bucket: (d) => d.toISOString().slice(0, 4) },
];

/** Pure: decides for one set of points (any VMs). */
export function planPrune(points: RestorePoint[], policy: PrunePolicy): { kept: PruneDecision[]; removed: PruneDecision[] } {
  const counts = [policy.keepLast, ...RULES.map((r) => policy[r.key])];
  for (const c of counts) {
    if (c !== undefined && (!Number.isInteger(c) || c < 0))
      throw badInput('PRUNE_POLICY', `keep counts must be whole numbers ≥ 0, got ${c}`);
  }
  if (!counts.some((c) => c !== undefined && c > 0)) {
    throw badInput(
      'PRUNE_POLICY',
      'no keep rule given: prune would remove every restore point',
      'pass at least one of --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly',
    );
  }
  const groups = new Map<string, RestorePoint[]>();
  for (const p of points) groups.set(p.vm.name, [...(groups.get(p.vm.name) ?? []), p]);
  const kept: PruneDecision[] = [];
  const removed: PruneDecision[] = [];
  for (const [vm, group] of [...groups.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    const sorted = [...group].sort((a, b) => Date.parse(b.time) - Date.parse(a.time) || b.id.localeCompare(a.id));
    const reasons = new Map<string, string[]>(sorted.map((p) => [p.id, []]));
    sorted.slice(0, policy.keepLast ?? 0).forEach((p, i) => reasons.get(p.id)?.push(`last ${i + 1}`));
    for (const rule of RULES) {
      let left = policy[rule.key] ?? 0;
      let last: string | undefined;
      for (const p of sorted) {
        if (left <= 0) break;
        const b = rule.bucket(new Date(p.time));
        if (b === last) continue;
        last = b;
        left--;
        reasons.get(p.id)?.push(`${rule.name} ${b}`);
      }
    }
    for (const p of sorted) {
      const r = reasons.get(p.id) ?? [];
      (r.length > 0 ? kept : removed).push({ id: p.id, vm, time: p.time, reasons: r });
    }
  }
  return { kept, removed };
}

export async function pruneRepository(repo: RepositoryMaintenance, opts: PruneOptions): Promise<PruneReport> {
  const dryRun = opts.dryRun ?? false;
  // A dry run changes nothing, so it can run beside backups.
  const lock = await repo.lock(dryRun ? 'shared' : 'exclusive', dryRun ? 'prune --dry-run' : 'prune');
  try {
    const points = (await repo.scanPoints()).points.filter((p) => opts.vm === undefined || p.vm.name === opts.vm);
    const plan = planPrune(points, opts);
    if (!dryRun) for (const p of plan.removed) await repo.removePoint(p.id);
    return { dryRun, ...plan, staleLocksRemoved: lock.staleRemoved };
  } finally {
    await lock.release();
  }
}
