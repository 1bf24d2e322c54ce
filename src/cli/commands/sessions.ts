/** `restorelab sessions`: recovery sessions with their state and age. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
import { ageSeconds, type RecoverySession } from '../../session/session.js';

/** One listed session, as `sessions --json` prints it (embedded and remote). */
export function sessionRow(s: RecoverySession, now: number) {
  return {
    session: s.id,
    vm: s.vm,
    point: s.point,
    driver: s.driver,
    state: s.state,
    ageSeconds: ageSeconds(s, now),
    heartbeatSeconds: s.heartbeatSeconds ?? null,
    addresses: s.addresses,
    ...(s.lab ? { lab: s.lab } : {}),
    ...(s.network ? { network: s.network } : {}),
    ...(s.migratedTo ? { migratedTo: s.migratedTo } : {}),
    ...(s.error ? { error: s.error } : {}),
    ...(s.worker ? { worker: s.worker } : {}),
  };
}

export function renderSessions(sessions: Array<ReturnType<typeof sessionRow>>): string {
  return sessions.length
    ? sessions
        .map(
          (s) =>
            `${s.session}  ${s.vm.padEnd(16)} ${s.state.padEnd(9)} ${String(s.ageSeconds).padStart(6)} s  ${Object.values(s.addresses).join(' ')}${s.worker ? `  on ${s.worker}` : ''}${s.error ? `  (${s.error.message})` : ''}`,
        )
        .join('\n')
    : 'no recovery sessions';
}

export function registerSessions(program: Command): void {
  program
    .command('sessions')
    .description('list recovery sessions (state and age), with those lab workers run when the catalog is shared')
    .action(async (_o, c: Command) => {
      const { listAllSessions } = await import('../../workers/sessions.js');
      const ctx = contextFor(c);
      const now = Date.now();
      const sessions = (await listAllSessions((await ctx.config()).stateDir)).map((s) => sessionRow(s, now));
      ctx.out.result({ sessions }, () => renderSessions(sessions));
    });
}
