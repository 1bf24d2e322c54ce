/**
 * The background process that keeps a read-only publication alive for a
 * file-level restore session after `restorelab mount` returns: the loop
 * devices read `<fuse>/<pub>/<disk>.raw`, and FUSE requests are answered by
 * whoever called startPublication, so that process must outlive the command.
 *
 * Protocol (over the IPC channel of its parent): it receives one
 * HolderRequest, answers one HolderReply, and then serves until SIGTERM or
 * SIGINT, when it closes the publication with discard (a read-only
 * publication has no writes worth keeping) and exits.
 *
 * Run as `node holder.js <session-id>`: the id in the command line lets
 * `umount` check that a recorded pid is still this holder before killing it.
 */
import type { PublishOptions, RunningPublication } from '../publish/contract.js';
import { startPublication } from '../publish/publish.js';

export interface HolderRequest {
  publish: PublishOptions;
  /** Key file of an encrypted repository (the startPublication hook). */
  keyFile?: string;
}

export type HolderReply =
  | { ok: true; publication: string; disks: Record<string, string> }
  | { ok: false; error: { code: string; message: string; hint?: string; exitCode?: number } };

function send(msg: HolderReply): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send) return resolve();
    process.send(msg, undefined, {}, () => resolve());
  });
}

async function main(): Promise<void> {
  const req = await new Promise<HolderRequest>((resolve) => process.once('message', (m) => resolve(m as HolderRequest)));
  let pub: RunningPublication;
  try {
    pub = await startPublication({ ...req.publish, readOnly: true }, req.keyFile ? { keyFile: req.keyFile } : {});
  } catch (err) {
    const e = err as { code?: string; message?: string; hint?: string; exitCode?: number };
    await send({
      ok: false,
      error: {
        code: typeof e.code === 'string' ? e.code : 'PUBLISH_FAILED',
        message: e.message ?? String(err),
        hint: e.hint,
        exitCode: e.exitCode,
      },
    });
    process.exit(1);
  }
  let closing = false;
  const stop = (): void => {
    if (closing) return;
    closing = true;
    pub.close({ discard: true }).then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`holder: closing the publication failed: ${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGHUP', () => undefined);
  await send({ ok: true, publication: pub.id, disks: pub.disks });
  process.disconnect?.();
  // Keeps the event loop alive: FUSE serves from native threads.
  setInterval(() => undefined, 1 << 30);
}

main().catch((err: unknown) => {
  process.stderr.write(`holder: ${String(err)}\n`);
  process.exit(1);
});
