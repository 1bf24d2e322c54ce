/**
 * The builder's images really boot under QEMU/TCG, and each variant shows the
 * behaviour a verification job relies on. Three boots at once (web,
 * broken-app, no-boot) on one bridge inside a network namespace this test
 * creates, each from its own qcow2 overlay so the cached image stays intact.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitForAgent } from '../../src/hypervisor/qga.js';
import type { Domain } from '../../src/hypervisor/types.js';
import { GUESTS, GuestNetwork, guestImage, waitFor } from '../helpers/guests.js';

const BOOT_TIMEOUT_MS = 120_000;
const dir = mkdtempSync(join(tmpdir(), 'rl-guests-'));
let net: GuestNetwork | undefined;

t.teardown(async () => {
  await net?.close();
  rmSync(dir, { recursive: true, force: true });
});

function sha256(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

function consoleText(dom: Domain): string {
  return existsSync(dom.consoleLog) ? readFileSync(dom.consoleLog, 'utf8') : '';
}

t.test('web, broken-app and no-boot boot under TCG and behave as documented', async (t) => {
  net = await GuestNetwork.create(dir);
  const lab = net;
  const webBaseSum = await sha256(await guestImage('web'));
  const t0 = Date.now();
  const [web, broken, noBoot] = await Promise.all([lab.boot('web'), lab.boot('broken-app'), lab.boot('no-boot')]);

  await t.test('web: agent, guest-exec and HTTP on its production IP', async (t) => {
    const agent = await waitForAgent(web.dom.agentSocket, BOOT_TIMEOUT_MS);
    t.comment(`web: boot to heartbeat ${Date.now() - t0} ms (TCG, three guests at once)`);
    t.teardown(() => agent.close());
    const host = await agent.exec('/bin/sh', ['-c', 'hostname; ip -4 addr show eth0']);
    t.equal(host.exitcode, 0);
    t.match(host.stdout, /^web\n/, 'the hostname is baked into the disk');
    t.match(host.stdout, /192\.168\.77\.10\/24/, 'so is the static address');
    const url = `http://${GUESTS.web?.ip}/`;
    const r = await waitFor('HTTP from web', 30_000, async () => {
      const x = await lab.http(url);
      return x.status === undefined ? undefined : x;
    });
    t.equal(r.status, 200, `GET ${url} from inside the test namespace`);
    t.equal(r.body?.trim(), GUESTS.web?.services[0]?.expect, 'serves the known page');
    t.ok((await agent.fsfreeze()) >= 1, 'guest-fsfreeze-freeze freezes the root filesystem');
    t.ok((await agent.fsthaw()) >= 1, 'and guest-fsfreeze-thaw thaws it');
    const shot = join(dir, 'web.ppm');
    await web.dom.screendump(shot);
    t.ok(statSync(shot).size > 1000, 'the VGA console can be captured');
  });

  await t.test('broken-app: the agent answers, HTTP never does', async (t) => {
    const agent = await waitForAgent(broken.dom.agentSocket, BOOT_TIMEOUT_MS);
    t.comment(`broken-app: boot to heartbeat ${Date.now() - t0} ms`);
    t.teardown(() => agent.close());
    await agent.ping();
    // The start script has run once the console says so; after that port 80 stays closed.
    await waitFor('the broken-app start attempt', 30_000, async () =>
      consoleText(broken.dom).includes('http service failed to start') ? true : undefined,
    );
    const listening = await agent.exec('/bin/sh', ['-c', 'netstat -ltn']);
    t.notMatch(listening.stdout, /:80\s/, 'nothing listens on port 80');
    const r = await lab.http(`http://${GUESTS['broken-app']?.ip}/`);
    t.equal(r.status, undefined, 'no HTTP answer');
    t.equal(r.error, 'ECONNREFUSED', 'the guest is up and refuses the connection');
  });

  await t.test('no-boot: the kernel panics on the console and the agent never answers', async (t) => {
    const text = await waitFor('the kernel panic on the serial console', BOOT_TIMEOUT_MS, async () => {
      const s = consoleText(noBoot.dom);
      return s.includes('Kernel panic') ? s : undefined;
    });
    t.comment(`no-boot: panic on the console after ${Date.now() - t0} ms`);
    t.match(text, /Kernel panic - not syncing: VFS: Unable to mount root fs/, 'the panic names the missing root');
    t.equal(await noBoot.dom.state(), 'running', 'panic=0: the VM stays up showing the panic');
    await t.rejects(waitForAgent(noBoot.dom.agentSocket, 10_000), 'guest-ping gets no answer');
    const shot = join(dir, 'no-boot.ppm');
    await noBoot.dom.screendump(shot);
    t.ok(statSync(shot).size > 1000, 'the panic screen can be captured');
  });

  await lab.close();
  net = undefined;
  t.equal(await sha256(web.base), webBaseSum, 'the cached web image is unchanged (boots wrote to overlays)');
});
