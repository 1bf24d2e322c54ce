/**
 * QemuDomain.waitReady against the moment QEMU's QMP socket file exists but
 * nobody listens yet (unit test with a scripted QMP peer, beside the real
 * QEMU start in qemu-driver.test.ts). The CI once lost a SureBackup run to
 * this window: a refused connect means "not yet", not "failed".
 */
import t from 'tap';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QemuDomain } from '../../src/hypervisor/qemu.js';

function qmpPeer(path: string, greetAfterMs = 0): Promise<Server> {
  const srv = createServer((c) => {
    setTimeout(() => c.write('{"QMP": {"version": {}, "capabilities": []}}\r\n'), greetAfterMs);
    c.on('data', (d: Buffer) => {
      for (const line of d
        .toString()
        .split('\n')
        .filter((l) => l.trim())) {
        const { id } = JSON.parse(line) as { id?: unknown };
        c.write(`${JSON.stringify({ return: {}, id })}\r\n`);
      }
    });
  });
  return new Promise((resolve) => srv.listen(path, () => resolve(srv)));
}

t.test('a socket file that refuses connections is waited out; other errors are not', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'rl-ready-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'qemu.pid'), String(process.pid));
  const sock = join(dir, 'qmp.sock');
  // A plain file at the socket path: connect() is refused, as between QEMU's bind() and listen().
  writeFileSync(sock, '');
  let srv: Server | undefined;
  t.teardown(() => srv?.close());
  const listenLater = new Promise<void>((resolve) =>
    setTimeout(() => {
      unlinkSync(sock);
      void qmpPeer(sock).then((s) => {
        srv = s;
        resolve();
      });
    }, 400),
  );
  const t0 = Date.now();
  await new QemuDomain('ready', dir).waitReady(0);
  await listenLater;
  t.ok(Date.now() - t0 >= 350, 'ready only once the monitor answered');
});

t.test('a peer that is not QMP still fails the start', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'rl-ready-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'qemu.pid'), String(process.pid));
  const srv = createServer((c) => c.end());
  await new Promise<void>((resolve) => srv.listen(join(dir, 'qmp.sock'), resolve));
  t.teardown(() => srv.close());
  await t.rejects(new QemuDomain('ready', dir).waitReady(0), /closed before greeting/);
});

t.test('a QEMU slow to greet on QMP (a loaded host) is still a start', async (t) => {
  // The CI lost a SureBackup run to a 5 s QMP greeting timeout while both cores were busy.
  const dir = mkdtempSync(join(tmpdir(), 'rl-ready-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'qemu.pid'), String(process.pid));
  const srv = await qmpPeer(join(dir, 'qmp.sock'), 6000);
  t.teardown(() => srv.close());
  const t0 = Date.now();
  await new QemuDomain('ready', dir).waitReady(0);
  t.ok(Date.now() - t0 >= 5900, 'ready once the late greeting came');
});
