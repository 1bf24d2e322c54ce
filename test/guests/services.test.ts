/**
 * The other three variants under TCG, booted at once in a test-made copy of
 * `prod`: db answers its banner on 5432, dns answers its one A record over
 * UDP 53 (and nothing else), no-agent serves HTTP but never answers the
 * guest agent. guest-shutdown and the ACPI power button power a guest off.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitForAgent } from '../../src/hypervisor/qga.js';
import { GUESTS, GuestNetwork, waitFor } from '../helpers/guests.js';

const BOOT_TIMEOUT_MS = 120_000;
const dir = mkdtempSync(join(tmpdir(), 'rl-services-'));
let net: GuestNetwork | undefined;

t.teardown(async () => {
  await net?.close();
  rmSync(dir, { recursive: true, force: true });
});

function guest(name: string): NonNullable<(typeof GUESTS)[string]> {
  const g = GUESTS[name];
  if (!g) throw new Error(`lab-templates/guests/${name}.json is missing`);
  return g;
}

t.test('db, dns and no-agent serve what lab-templates/guests documents', async (t) => {
  net = await GuestNetwork.create(dir);
  const lab = net;
  const t0 = Date.now();
  const [db, , noAgent] = await Promise.all([lab.boot('db'), lab.boot('dns'), lab.boot('no-agent')]);

  await t.test('db: banner on 5432', async (t) => {
    const svc = guest('db').services[0];
    const r = await waitFor('the db banner', BOOT_TIMEOUT_MS, async () => {
      const x = await lab.tcpBanner(guest('db').ip, svc?.port ?? 5432);
      return x.line === undefined ? undefined : x;
    });
    t.comment(`db: banner after ${Date.now() - t0} ms (TCG, three guests at once)`);
    t.equal(r.line, svc?.expect, 'the known banner line');
    const again = await lab.tcpBanner(guest('db').ip, svc?.port ?? 5432);
    t.equal(again.line, svc?.expect, 'the service keeps serving after a client left');
  });

  await t.test('dns: one A record over UDP 53', async (t) => {
    const svc = guest('dns').services[0];
    const r = await waitFor('the dns answer', BOOT_TIMEOUT_MS, async () => {
      const x = await lab.dnsA(guest('dns').ip, svc?.query ?? 'web.lab.test');
      return x.addresses === undefined ? undefined : x;
    });
    t.comment(`dns: first answer after ${Date.now() - t0} ms`);
    t.same(r.addresses, [svc?.expect], `${svc?.query} -> ${svc?.expect}`);
    const other = await lab.dnsA(guest('dns').ip, 'mail.lab.test');
    t.notOk(other.addresses, 'no record for other names, and no forwarding');
    t.match(other.error ?? '', /ENOTFOUND|ESERVFAIL|EREFUSED|ENODATA|ECONNREFUSED/, 'the query fails');
  });

  await t.test('no-agent: HTTP answers, the agent never does', async (t) => {
    const url = `http://${guest('no-agent').ip}/`;
    const r = await waitFor('HTTP from no-agent', BOOT_TIMEOUT_MS, async () => {
      const x = await lab.http(url);
      return x.status === undefined ? undefined : x;
    });
    t.equal(r.status, 200, 'the guest is up and serving');
    t.equal(r.body?.trim(), guest('no-agent').services[0]?.expect);
    await t.rejects(waitForAgent(noAgent.dom.agentSocket, 10_000), 'guest-ping gets no answer');
  });

  await t.test('guest-shutdown powers the guest off', async (t) => {
    const agent = await waitForAgent(db.dom.agentSocket, BOOT_TIMEOUT_MS);
    // guest-shutdown sends no reply on success: do not wait for one.
    await agent.execute('guest-shutdown', { mode: 'powerdown' }, 3000).catch(() => undefined);
    agent.close();
    // QEMU exits when the guest powers off; the driver records no outcome of its own.
    await waitFor('db to power off', 60_000, async () => ((await db.dom.state()) === 'running' ? undefined : true));
    t.not(await db.dom.state(), 'running', 'the VM is no longer running');
  });

  await t.test("an ACPI power-off (the driver's graceful stop) shuts the guest down", async (t) => {
    await noAgent.dom.stop(90_000);
    t.not(await noAgent.dom.state(), 'running');
    t.match(readFileSync(noAgent.dom.consoleLog, 'utf8'), /reboot: Power down/, 'the guest powered itself off (acpid)');
  });

  await lab.close();
  net = undefined;
});
