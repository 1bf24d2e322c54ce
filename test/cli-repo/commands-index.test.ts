/**
 * The CLI loads only the module of the command a call names
 * (src/cli/commands/index.ts). The table's names must be exactly what each
 * module registers, or a command would be missing from a call that names it;
 * help and unknown commands must still see every command.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { Command } from 'commander';
import { commandModules, commandsFor } from '../../src/cli/commands/index.js';
import { projectPath } from '../../src/paths.js';

function registered(register: (p: Command) => void): string[] {
  const p = new Command();
  register(p);
  return p.commands.map((c) => c.name());
}

t.test('each module registers exactly the top-level commands the table names for it, and no name is in two modules', async (t) => {
  const seen = new Map<string, number>();
  for (const [i, m] of commandModules.entries()) {
    t.same(registered(await m.load()).sort(), [...m.names].sort(), `module ${i}: ${m.names.join(', ')}`);
    for (const n of m.names) seen.set(n, (seen.get(n) ?? 0) + 1);
  }
  t.same(
    [...seen].filter(([, k]) => k > 1),
    [],
    'no duplicates',
  );
});

t.test('a call naming a command loads its module only; help, no command and unknown commands load them all', async (t) => {
  const node = ['node', 'restorelab'];
  const names = async (argv: string[]): Promise<string[]> => (await commandsFor([...node, ...argv])).flatMap(registered);
  t.same(await names(['backup', '--repo', 'r', '--vm', 'v']), ['backup']);
  t.same(await names(['--json', '--config', 'backup', 'points']), ['points'], "a global option's value is not the command");
  t.same(await names(['workers']), ['worker', 'workers'], 'the module of a command registers its siblings too');
  const all = commandModules.flatMap((m) => m.names);
  t.same(await names([]), all);
  t.same(await names(['--help']), all);
  t.same(await names(['help', 'backup']), all);
  t.same(await names(['bakup']), all, 'a mistyped command: commander suggests from them all');
});

function cli(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [projectPath('bin', 'restorelab.js'), ...args]);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

t.test('the real CLI: the help lists every command, and a typo still gets its suggestion', async (t) => {
  const help = await cli(['--help']);
  t.equal(help.code, 0);
  const all = new Command();
  for (const m of commandModules) (await m.load())(all);
  // Internal commands (a supervisor's, a publisher's) are hidden from the help, as before.
  const shown = all.commands.filter((c) => !(c as unknown as { _hidden: boolean })._hidden).map((c) => c.name());
  t.ok(shown.length >= 20, `${shown.length} commands in the help`);
  for (const n of shown) t.match(help.out, new RegExp(`\\n  ${n}\\b`), `help lists ${n}`);
  const typo = await cli(['bakup']);
  t.equal(typo.code, 2);
  t.match(typo.out, /Did you mean backup\?/);
  const one = await cli(['backup', '--help']);
  t.equal(one.code, 0);
  t.match(one.out, /Usage: restorelab backup \[options\]/);
});
