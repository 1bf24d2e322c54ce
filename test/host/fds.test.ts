/**
 * Children of a FUSE publisher must not inherit its /dev/fuse descriptor
 * (libfuse2 opens it without close-on-exec): checked with a real mount.
 */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, type StdioOptions } from 'node:child_process';
import { PublicationDatastore } from '../../src/datastore/publication-datastore.js';
import { FuseFrontend } from '../../src/fuse/fuse-frontend.js';
import { fuseDescriptors, stdioWithoutFuse } from '../../src/host/fds.js';

function fuseFdsOfChild(stdio: StdioOptions): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = spawn('/bin/sh', ['-c', 'n=0; for f in /proc/$$/fd/*; do [ "$(readlink "$f")" = /dev/fuse ] && n=$((n+1)); done; echo $n'], {
      stdio,
    });
    let out = '';
    c.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    c.on('error', reject);
    c.on('exit', () => resolve(Number(out.trim())));
  });
}

t.test('a child spawned with stdioWithoutFuse holds no /dev/fuse descriptor', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-fds-'));
  const fuse = await FuseFrontend.mount(new PublicationDatastore(), { mountPoint: path.join(dir, 'mnt') });
  t.teardown(async () => {
    await fuse.unmount();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  t.ok(fuseDescriptors().length > 0, 'the mounting process holds /dev/fuse');
  t.ok((await fuseFdsOfChild(['ignore', 'pipe', 'inherit'])) > 0, 'a plain spawn inherits it (libfuse2 sets no close-on-exec)');
  t.equal(await fuseFdsOfChild(stdioWithoutFuse(['ignore', 'pipe', 'inherit'])), 0, 'stdioWithoutFuse hides it from the child');
});
