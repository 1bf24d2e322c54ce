/**
 * The `restorelab` command line. Each capability registers its subcommands
 * from its own module in ./commands; this file only wires them up and turns
 * errors into messages and exit codes (docs/cli.md). With --server (or
 * RESTORELAB_SERVER) the commands run through a daemon instead: remote.ts.
 */
import { Command, CommanderError } from 'commander';
import { tracePhase } from '../host/trace.js';
import { RestorelabError, ExitCode } from '../errors.js';
import { commandsFor } from './commands/index.js';
import type { RegisterCommand } from './context.js';
import { applyRemoteMode, remoteTarget, type RemoteAction, type RemoteTarget } from './remote.js';

/** `remote` comes with the commands' remote forms (remote-commands.ts), which only a --server call loads. */
export function buildProgram(
  commands: readonly RegisterCommand[],
  remote?: { target: RemoteTarget; commands: Record<string, RemoteAction> },
): Command {
  const program = new Command();
  program
    .name('restorelab')
    .description('Backup repository, instant VM recovery and SureBackup-style verification labs')
    .option('--json', 'print one JSON document on stdout (for scripts)')
    .option('--config <file>', 'configuration file (default: config/default.json plus environment)')
    .option('--server <url>', 'run the command through a restorelab server, e.g. https://host:8470 (env RESTORELAB_SERVER)')
    .option('--token <token>', 'API token for --server (env RESTORELAB_TOKEN)')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  for (const register of commands) register(program);
  if (remote) applyRemoteMode(program, remote.target, remote.commands);
  return program;
}

function wantsJson(argv: string[]): boolean {
  return argv.includes('--json');
}

export async function run(argv: string[]): Promise<number> {
  tracePhase('main run');
  try {
    const target = remoteTarget(argv);
    // Loaded only for --server: they import every command's renderer, about 30 ms of a local call's start-up.
    // A call through a server loads every command: the remote forms are applied to them all.
    const commands = await commandsFor(target ? [] : argv);
    const program = buildProgram(
      commands,
      target ? { target, commands: (await import('./remote-commands.js')).remoteCommands } : undefined,
    );
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.ok;
  } catch (err) {
    return report(err, wantsJson(argv));
  }
}

function report(err: unknown, json: boolean): number {
  if (err instanceof CommanderError) {
    // Help and version are "errors" to commander; they already printed.
    if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return ExitCode.ok;
    if (json) process.stdout.write(JSON.stringify({ ok: false, error: { code: 'USAGE', message: err.message } }) + '\n');
    return ExitCode.badInput;
  }
  if (err instanceof RestorelabError) {
    if (json) {
      process.stdout.write(JSON.stringify({ ok: false, error: { code: err.code, message: err.message, hint: err.hint } }) + '\n');
    }
    process.stderr.write(`error: ${err.message}\n`);
    if (err.hint) process.stderr.write(`  fix: ${err.hint}\n`);
    return err.exitCode;
  }
  const e = err instanceof Error ? err : new Error(String(err));
  if (json) process.stdout.write(JSON.stringify({ ok: false, error: { code: 'INTERNAL', message: e.message } }) + '\n');
  process.stderr.write(
    `internal error: ${e.stack ?? e.message}\n  this is a bug in restorelab; please report it with the command you ran\n`,
  );
  return ExitCode.failure;
}
