/**
 * A failed recovery keeps its evidence, for real: the `no-boot` test guest
 * (its kernel panics, lab-templates/vms/no-boot.json) recovered with the qemu
 * driver into a lab gives no heartbeat, so `recover` fails with NO_HEARTBEAT;
 * the serial console log and the last screen the hint names exist after
 * teardown, and nothing else is left: QEMU, the supervisor, the lab's
 * namespace, taps and host veth, the FUSE mount, the publication.
 */
import t from 'tap';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RestorelabError } from '../../src/errors.js';
import { readLabState, type LabState } from '../../src/lab/lab.js';
import { exec } from '../../src/host/exec.js';
import { listPublications } from '../../src/publish/publish.js';
import { recover } from '../../src/session/recover.js';
import { guestRepository } from '../helpers/repository.js';
import { residue, running, waitFor, recoveryWorkspace } from './fixtures/recovery.js';
import { subnet } from '../helpers/subnets.js';

const { dir, stateDir, store, tag } = recoveryWorkspace(t, 'rl-recover-ev-');

t.test('recover of a guest that never boots: NO_HEARTBEAT, and the console log and screen the hint names are kept', async (t) => {
  const { repo } = await guestRepository(dir, 'no-boot');
  const lab = `re${tag}`;
  const labPath = join(dir, `${lab}.json`);
  writeFileSync(
    labPath,
    JSON.stringify({
      name: lab,
      networks: [
        { name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('session/recover-evidence:panic') },
      ],
    }),
  );
  // The lab as it stood while the VM ran (its namespace, host veth and taps), to look for each after teardown.
  let seen: LabState | undefined;
  const watch = setInterval(() => {
    const st = readLabState(stateDir, lab);
    if (st?.ready && st.taps.length > 0) seen = st;
  }, 200);
  // Its kernel panics within seconds; 30 s, as surebackup/failures gives it, is long enough for the console's first lines.
  const err = await recover({ repo, vm: 'no-boot', lab: labPath, driver: 'qemu', accel: 'tcg', stateDir, heartbeatTimeoutMs: 30_000 })
    .catch((e: unknown) => e)
    .finally(() => clearInterval(watch));
  t.ok(err instanceof RestorelabError, `recover fails: ${(err as Error).message}`);
  const e = err as RestorelabError;
  t.equal(e.code, 'NO_HEARTBEAT');
  t.match(e.message, /30 s/, 'after its boot timeout');
  t.ok(seen, "the lab was up with the VM's tap while it booted");
  if (seen) {
    const links = (await exec('ip', ['-j', 'link', 'show'])).stdout;
    t.notOk(
      (await exec('ip', ['netns', 'list'])).stdout.includes(seen.netns),
      `the lab namespace ${seen.netns} is gone, and its taps (${seen.taps.map((x) => x.name).join(', ')}) with it`,
    );
    t.notOk(links.includes(`"${seen.hostVeth}"`), `the host end of the lab's veth (${seen.hostVeth}) is gone`);
  }
  const consolePath = /serial console is kept in (\S+?)(,|$)/.exec(e.hint ?? '')?.[1];
  const screenPath = /last screen in (\S+?)(,|;|$)/.exec(e.hint ?? '')?.[1];
  t.ok(consolePath, `the hint names the console log: ${e.hint}`);
  t.ok(consolePath && existsSync(consolePath), `the console log exists after teardown: ${consolePath}`);
  const text = consolePath && existsSync(consolePath) ? readFileSync(consolePath, 'utf8') : '';
  t.match(text, /Linux version/, 'it is what the guest kernel wrote on its serial console');
  t.ok(screenPath && existsSync(screenPath), `the last screen is kept too: ${screenPath}`);
  if (screenPath && existsSync(screenPath)) t.same([...readFileSync(screenPath).subarray(1, 4)], [...Buffer.from('PNG')], 'as PNG');

  const s = store.list().find((x) => x.vm === 'no-boot');
  t.equal(s?.state, 'failed');
  t.equal(s?.error?.code, 'NO_HEARTBEAT');
  t.same(s?.evidence, { console: consolePath, screenshot: screenPath }, 'the record names the same files');
  t.ok(consolePath?.startsWith(store.workDir(s?.id ?? '')), "kept in the session's own directory");
  t.same(s?.resources, { taps: [] }, 'nothing left in the record');
  // The supervisor ends on its own once it has torn down; init may reap it a little later.
  if (s?.supervisorPid)
    await waitFor(`supervisor pid ${s.supervisorPid} to exit`, () => !running(s.supervisorPid!), 30_000).catch(() => undefined);
  const left = await residue({
    domain: s?.domain ?? 'none',
    mount: join(store.workDir(s?.id ?? ''), 'mnt'),
    ...(s?.supervisorPid ? { supervisorPid: s.supervisorPid } : {}),
  });
  t.same(left, [], 'no QEMU, supervisor or mount remains');
  t.equal(readLabState(stateDir, lab), undefined, 'the lab recover brought up is down');
  t.same(listPublications(stateDir), [], 'the publication is gone');
});

t.test('recover of the damaged guest fails for the reason its verification gives: the guest agent never answered', async (t) => {
  const ddir = join(dir, 'damaged');
  const { repo } = await guestRepository(ddir, 'damaged');
  const lab = `rd${tag}`;
  const labPath = join(dir, `${lab}.json`);
  writeFileSync(
    labPath,
    JSON.stringify({
      name: lab,
      networks: [
        { name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: subnet('session/recover-evidence:second') },
      ],
    }),
  );
  const err = await recover({
    repo,
    vm: 'damaged',
    lab: labPath,
    driver: 'qemu',
    accel: 'tcg',
    stateDir,
    heartbeatTimeoutMs: 60_000,
  }).catch((e: unknown) => e);
  t.ok(err instanceof RestorelabError, `recover fails: ${(err as Error).message}`);
  const e = err as RestorelabError;
  t.equal(e.code, 'NO_HEARTBEAT');
  // The same words test/surebackup/verdicts.test.ts expects from the heartbeat test of a verification.
  t.match(e.message, /the guest agent never answered within the maximum boot time/, 'the reason a verification reports');
  const consolePath = /serial console is kept in (\S+?)(,|$)/.exec(e.hint ?? '')?.[1];
  t.ok(consolePath && existsSync(consolePath), `the console log is kept: ${e.hint}`);
  t.match(
    consolePath && existsSync(consolePath) ? readFileSync(consolePath, 'utf8') : '',
    /guest agent exited/,
    'and shows the agent failing',
  );
  t.same(listPublications(stateDir), [], 'the publication is gone');
});
