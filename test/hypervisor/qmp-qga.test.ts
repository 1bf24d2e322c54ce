/**
 * QMP against a real QEMU (no guest OS needed: QMP, screendump and events
 * come from QEMU itself), and the guest-agent client against a real qemu-ga
 * run on the host with a unix-listen channel, plus a fake peer for the
 * stale-reply and 0xFF cases the real agent rarely produces on demand.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, rmSync, statSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../../src/hypervisor/qmp.js';
import { QgaClient } from '../../src/hypervisor/qga.js';
import { which } from '../../src/host/exec.js';
import { ppmToPng } from '../../src/hypervisor/screen.js';
import { decode } from 'fast-png';
import { waitListening } from '../helpers/unix-socket.js';

t.test('QMP: greeting, commands by id, events, screendump, errors, close', async (t) => {
  const qemu = which('qemu-system-x86_64');
  t.ok(qemu, 'qemu-system-x86_64 is installed (apt-get install qemu-system-x86)');
  if (!qemu) return;
  const dir = mkdtempSync(join(tmpdir(), 'rl-qmp-'));
  const sock = join(dir, 'qmp.sock');
  const p = spawn(
    qemu,
    ['-accel', 'tcg', '-display', 'none', '-vga', 'std', '-nodefaults', '-m', '32', '-S', '-qmp', `unix:${sock},server=on,wait=off`],
    { stdio: 'ignore' },
  );
  t.teardown(() => {
    p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  await waitListening(sock);
  const qmp = await QmpClient.connect(sock);
  t.ok(qmp.greeting && 'version' in qmp.greeting, 'greeting carries the version');
  const [st, ver] = await Promise.all([
    qmp.execute<{ status: string }>('query-status'),
    qmp.execute<{ qemu: { major: number } }>('query-version'),
  ]);
  t.equal(st.status, 'prelaunch', 'concurrent replies are matched to their commands');
  t.ok(ver.qemu.major >= 5);
  await t.rejects(qmp.execute('no-such-command'), /CommandNotFound/);
  const resumed = qmp.waitEvent('RESUME');
  await qmp.execute('cont');
  await resumed;
  t.pass('RESUME event seen');
  await new Promise((r) => setTimeout(r, 300));
  const ppm = join(dir, 'screen.ppm');
  await qmp.execute('screendump', { filename: ppm });
  t.ok(statSync(ppm).size > 1000, 'screendump wrote an image');
  t.equal(readFileSync(ppm).subarray(0, 2).toString(), 'P6', 'as PPM');
  const png = join(dir, 'screen.png');
  ppmToPng(ppm, png);
  const decoded = decode(readFileSync(png));
  t.ok(decoded.width >= 640 && decoded.height >= 200, `PNG is ${decoded.width}x${decoded.height}`);
  const gone = qmp.waitEvent('SHUTDOWN');
  await qmp.execute('quit');
  await gone.catch(() => undefined);
  await qmp.close();
  t.ok(qmp.isClosed);
  await t.rejects(qmp.execute('query-status'), /closed/);
});

t.test('QGA: sync, ping, exec with output, errors against a real qemu-ga', async (t) => {
  const qga = which('qemu-ga');
  t.ok(qga, 'qemu-ga is installed (apt-get install qemu-guest-agent)');
  if (!qga) return;
  const dir = mkdtempSync(join(tmpdir(), 'rl-qga-'));
  const sock = join(dir, 'qga.sock');
  const p = spawn(qga, ['-m', 'unix-listen', '-p', sock, '-t', dir, '-f', join(dir, 'qga.pid')], { stdio: 'ignore' });
  t.teardown(() => {
    p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  await waitListening(sock);
  const c = await QgaClient.connect(sock);
  await c.ping();
  t.pass('guest-ping answered');
  writeFileSync(join(dir, 'hostname'), 'web\n');
  const r = await c.exec('/bin/cat', [join(dir, 'hostname')]);
  t.same(r, { exitcode: 0, stdout: 'web\n', stderr: '' }, 'guest-exec output decoded from base64');
  const bad = await c.exec('/bin/sh', ['-c', 'echo oops >&2; exit 3']);
  t.equal(bad.exitcode, 3);
  t.equal(bad.stderr, 'oops\n');
  await t.rejects(c.execute('guest-no-such'), /CommandNotFound/);
  c.close();
});

t.test('QGA: stale replies and garbage before the sync are discarded (fake agent)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'rl-qgafake-'));
  const sock = join(dir, 'qga.sock');
  const srv = createServer((s) => {
    // A previous client's answer and half a line are still queued.
    s.write('{"return": {}}\n{"return": 12345}\n{"retu');
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (;;) {
        const nl = buf.indexOf('\n');
        if (nl < 0) break;
        const line = buf.slice(0, nl).replace(/\xff/g, '');
        buf = buf.slice(nl + 1);
        const msg = JSON.parse(line) as { execute: string; arguments?: { id?: number } };
        if (msg.execute === 'guest-sync-delimited') {
          s.write(Buffer.concat([Buffer.from('{"return": 7}\n'), Buffer.from([0xff]), Buffer.from(`{"return": ${msg.arguments?.id}}\n`)]));
        } else if (msg.execute === 'guest-ping') {
          s.write('{"return": {}}\n');
        }
      }
    });
  });
  await new Promise<void>((r) => srv.listen(sock, r));
  t.teardown(() => {
    srv.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const c = await QgaClient.connect(sock, { timeoutMs: 2000 });
  await c.ping();
  t.pass('synchronised past stale data');
  await t.rejects(c.execute('guest-info', undefined, 200), /no reply within 200 ms/, 'timeout when the agent is silent');
  c.close();
});
