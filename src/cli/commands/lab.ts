/** `restorelab lab up|down|list`: virtual labs (see docs/labs.md). */
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { contextFor } from '../context.js';
import type { LabState } from '../../lab/lab.js';

function describe(st: LabState): string {
  const nets = st.networks.map((n) => `  ${n.name}: ${n.subnet} (gateway ${n.gateway}) reachable from the host as ${n.masquerade}`);
  return [`lab ${st.name}: namespace ${st.netns}, uplink ${st.hostVeth} ${st.hostAddress} <-> ${st.labAddress}`, ...nets].join('\n');
}

export function registerLab(program: Command): void {
  const cmd = program.command('lab').description('isolated virtual labs mirroring production networks');
  cmd
    .command('up <lab.json>')
    .description('create the lab (a leftover of the same name is removed first)')
    .action(async (file: string, _o, c: Command) => {
      const { labUp, loadLab } = await import('../../lab/lab.js');
      const ctx = contextFor(c);
      const st = await labUp(loadLab(file), { stateDir: (await ctx.config()).stateDir });
      ctx.out.result(st, (v) => describe(v as LabState));
    });
  cmd
    .command('down <lab>')
    .description('remove a lab (by lab file or name); removing a lab that is not up is not an error')
    .action(async (lab: string, _o, c: Command) => {
      const { labDown, loadLab } = await import('../../lab/lab.js');
      const ctx = contextFor(c);
      const name = existsSync(lab) ? loadLab(lab).name : lab;
      const st = await labDown(name, { stateDir: (await ctx.config()).stateDir, quietIfMissing: true });
      ctx.out.result({ name, removed: st !== undefined }, () => (st ? `lab ${name} removed` : `lab ${name} was not up`));
    });
  cmd
    .command('list')
    .description('labs that are up')
    .action(async (_o, c: Command) => {
      const { listLabs } = await import('../../lab/lab.js');
      const ctx = contextFor(c);
      const labs = listLabs((await ctx.config()).stateDir);
      ctx.out.result({ labs }, () => (labs.length ? labs.map(describe).join('\n') : 'no labs are up'));
    });
}
