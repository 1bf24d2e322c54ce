/**
 * Lab taps lent to the host namespace (src/hypervisor/tap-handover.ts), on
 * real namespaces: two labs whose taps are both called `tap0` lend them at
 * the same moment (two recoveries with libvirt, or over nfs://, starting
 * together), each comes back under its own name onto its own bridge, and a
 * lend that fails half-way gives back what it had moved. No traffic is sent.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { exec } from '../../src/host/exec.js';
import { lendLabTaps } from '../../src/hypervisor/tap-handover.js';
import type { NicAttachment } from '../../src/hypervisor/types.js';

const tag = randomBytes(3).toString('hex');

async function ip(args: string[]): Promise<string> {
  const r = await exec('ip', args, { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** A namespace with a bridge and `tap0` on it, as a lab has. */
async function labNamespace(name: string): Promise<string> {
  const netns = `rl-th${tag}-${name}`;
  await ip(['netns', 'add', netns]);
  t.teardown(() => exec('ip', ['netns', 'del', netns]));
  await ip(['-n', netns, 'link', 'add', 'br0', 'type', 'bridge']);
  await ip(['-n', netns, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap']);
  await ip(['-n', netns, 'link', 'set', 'tap0', 'master', 'br0', 'up']);
  return netns;
}

const masterOf = async (netns: string, dev: string): Promise<string | undefined> =>
  (JSON.parse(await ip(['-n', netns, '-j', 'link', 'show', dev])) as { master?: string }[])[0]?.master;
const inHost = async (dev: string): Promise<boolean> => (await exec('ip', ['link', 'show', dev])).code === 0;

t.test('two labs lend their tap0 at once: each under its own host-side name, and back onto its bridge', async (t) => {
  const a = await labNamespace('a');
  const b = await labNamespace('b');
  const nic = (netns: string): NicAttachment => ({ kind: 'tap', mac: '52:54:00:00:00:01', tap: 'tap0', netns });
  const [la, lb] = await Promise.all([lendLabTaps([nic(a)]), lendLabTaps([nic(b)])]);
  const [na, nb] = [la.nics[0] as NicAttachment & { kind: 'tap' }, lb.nics[0] as NicAttachment & { kind: 'tap' }];
  t.not(na.tap, 'tap0', 'lent under another name than its lab name');
  t.not(na.tap, nb.tap, 'the two lent taps have different names');
  t.ok(na.tap.length <= 15, 'a name the kernel takes (15 characters at most)');
  t.ok((await inHost(na.tap)) && (await inHost(nb.tap)), 'both are in the host namespace, where QEMU opens them');
  t.equal((await exec('ip', ['-n', a, 'link', 'show', 'tap0'])).code, 1, 'and no longer in their labs');
  await Promise.all([la.giveBack(), lb.giveBack()]);
  t.notOk((await inHost(na.tap)) || (await inHost(nb.tap)), 'given back: none left in the host namespace');
  t.equal(await masterOf(a, 'tap0'), 'br0', 'lab a has its tap0 back on its bridge');
  t.equal(await masterOf(b, 'tap0'), 'br0', 'lab b too');
});

t.test('a NIC that is not a lab tap is passed as it is; a lend that fails gives back what it moved', async (t) => {
  const a = await labNamespace('c');
  const bridgeNic: NicAttachment = { kind: 'bridge', mac: '52:54:00:00:00:02', bridge: 'virbr-none' };
  const good: NicAttachment = { kind: 'tap', mac: '52:54:00:00:00:03', tap: 'tap0', netns: a };
  const lent = await lendLabTaps([bridgeNic, good]);
  t.same(lent.nics[0], bridgeNic, 'the bridge NIC is untouched');
  await lent.giveBack();

  const missing: NicAttachment = { kind: 'tap', mac: '52:54:00:00:00:04', tap: 'tap9', netns: a };
  await t.rejects(lendLabTaps([good, missing]), /tap9/, 'a tap that is not there fails the lend');
  t.equal(await masterOf(a, 'tap0'), 'br0', 'the tap it had moved first is back on its bridge');
});
