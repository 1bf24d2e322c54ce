/**
 * `restorelab cleanup` over a state directory with real stale state (no VM,
 * no namespace is made: no lock needed): a publication whose repository was
 * deleted after it took writes, an empty overlay no record names, and a lab
 * record whose namespace is gone, and the work directories of two verification
 * VMs whose run is gone (one recorded, one not). The dry run reports all of it and changes
 * nothing; the real run removes what is safe and keeps the overlay with
 * writes until it is named with --discard-writes; bad flags are refused.
 */
import t from 'tap';
import { existsSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { detachMount } from '../../src/fuse/mounts.js';
import { mountEntry } from '../../src/host/mounts.js';
import { LOCAL_USER, listPublications, removePublication } from '../../src/publish/publish.js';
import type { ReconcileReport } from '../../src/reconcile/reconcile.js';
import { cli, fingerprint, json, publicationOfDeletedRepo } from './fixtures/state.js';
import { writeVmRecord } from '../../src/surebackup/vm-record.js';

/**
 * The items of this state directory: unrecorded `rl-*` namespaces are the
 * host's (other test files' labs may be up for a while beside this one).
 */
const ours = (r: ReconcileReport): ReconcileReport['stale'] => r.stale.filter((s) => s.kind !== 'netns');

const dir = mkdtempSync('/tmp/rlclean-');
const state = join(dir, 'state');
const mnt = join(dir, 'mnt');
t.teardown(async () => {
  for (const p of listPublications(state)) await removePublication(state, p.id, { discard: true, as: LOCAL_USER }).catch(() => undefined);
  if (mountEntry(mnt)) await detachMount(mnt);
  rmSync(dir, { recursive: true, force: true });
});

const gone = await publicationOfDeletedRepo(dir, state, mnt);
const orphan = join(state, 'overlays', 'web-20200101T000000Z-000000');
mkdirSync(orphan, { recursive: true });
// A lab record as `lab up` writes it, whose namespace no longer exists (a reboot removes every namespace).
mkdirSync(join(state, 'labs'), { recursive: true });
writeFileSync(
  join(state, 'labs', 'rebooted.json'),
  JSON.stringify({
    name: 'rebooted',
    netns: 'rl-rebooted-0a0b0c',
    hostVeth: 'rl0a0b0ch',
    hostAddress: '169.254.77.1',
    labAddress: '169.254.77.2',
    hostTable: 'restorelab_0a0b0c',
    routes: [],
    networks: [],
    taps: [],
    createdAt: new Date().toISOString(),
    ready: true,
  }),
);

// A SureBackup run killed mid-verification: its VM's work directory and record
// (its QEMU is gone too here; test/workers/workers.test.ts kills one that runs).
const deadRun = join(state, 'surebackup', 'vms', 'web-0a0b0c');
mkdirSync(deadRun, { recursive: true });
writeVmRecord(deadRun, { pid: 2 ** 22 + 1, driver: 'qemu', domain: 'sb-web-0a0b0c', lab: 'rebooted', taps: [] });
// One without a record (an older version's), old enough not to be one being set up.
const unrecorded = join(state, 'surebackup', 'vms', 'db-0d0e0f');
mkdirSync(unrecorded, { recursive: true });
utimesSync(unrecorded, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));
// One whose record names a path for a domain: never handed to the driver, so it counts as unrecorded.
const forged = join(state, 'surebackup', 'vms', 'web-0d0e10');
mkdirSync(forged, { recursive: true });
writeFileSync(join(forged, 'vm.json'), JSON.stringify({ pid: 2 ** 22 + 1, driver: 'qemu', domain: '../../../etc', lab: 'x', taps: [] }));
utimesSync(forged, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));

t.test('bad flags get a clear error and change nothing', async (t) => {
  const before = fingerprint(state);
  const unknown = await cli(['cleanup', '--bogus', '--json'], state);
  t.equal(unknown.code, 2);
  t.match(JSON.parse(unknown.stdout), { ok: false, error: { code: 'USAGE', message: /unknown option '--bogus'/ } });
  const discard = await cli(['cleanup', '--discard-writes', '--json'], state);
  t.equal(discard.code, 2);
  t.match(JSON.parse(discard.stdout), { error: { code: 'BAD_FLAGS', hint: /--item/ } });
  const item = await cli(['cleanup', '--item', 'bogus', '--json'], state);
  t.equal(item.code, 2);
  t.match(JSON.parse(item.stdout), { error: { code: 'BAD_STALE_ITEM' } });
  const missing = await cli(['cleanup', '--item', 'lab:never-was', '--json'], state);
  t.equal(missing.code, 5);
  t.match(JSON.parse(missing.stdout), { error: { code: 'STALE_ITEM_NOT_FOUND' } });
  t.equal(fingerprint(state), before, 'the state directory is unchanged');
});

t.test('--dry-run reports every stale item and changes nothing', async (t) => {
  const before = fingerprint(state);
  const r = json<ReconcileReport>(await cli(['cleanup', '--dry-run', '--json'], state));
  t.equal(r.dryRun, true);
  const byId = new Map(r.stale.map((s) => [s.id, s]));
  t.match(byId.get(`publication:${gone.id}`), { safe: false, reason: new RegExp(`repository ${gone.repo} is gone`) });
  t.ok((byId.get(`publication:${gone.id}`)?.bytes ?? 0) >= 262144, 'the overlay with writes is listed with its size');
  t.type(byId.get(`publication:${gone.id}`)?.ageSeconds, 'number', 'and its age');
  t.match(byId.get(`overlay:${orphan}`), { safe: true, bytes: 0, reason: /no publication record/ });
  t.match(byId.get('lab:rebooted'), { safe: true, reason: /namespace rl-rebooted-0a0b0c is gone/ });
  t.match(byId.get('vm:web-0a0b0c'), { kind: 'vm', safe: true, reason: /SureBackup run \(pid 4194305\) that verified it is gone/ });
  t.match(byId.get('vm:db-0d0e0f'), { kind: 'vm', safe: false, reason: /without a record/ });
  t.match(byId.get('vm:web-0d0e10'), { kind: 'vm', safe: false, reason: /without a record/ }, 'a forged record is no record');
  t.ok(
    r.stale.every((s) => s.outcome === undefined),
    'a dry run does nothing to any item',
  );
  t.equal(fingerprint(state), before, 'the state directory is unchanged');
  const human = await cli(['cleanup', '--dry-run'], state);
  t.match(human.stdout, /dry run: nothing changed/);
});

t.test('cleanup removes what is safe and keeps the overlay with writes until it is named', async (t) => {
  const r = json<ReconcileReport>(await cli(['cleanup', '--json'], state));
  const outcome = (id: string): string | undefined => r.stale.find((s) => s.id === id)?.outcome?.action;
  t.equal(outcome('lab:rebooted'), 'removed');
  t.notOk(existsSync(join(state, 'labs', 'rebooted.json')), 'the lab record is gone');
  t.equal(outcome(`overlay:${orphan}`), 'removed');
  t.notOk(existsSync(orphan), 'the empty overlay is gone');
  t.equal(outcome(`publication:${gone.id}`), 'kept');
  t.equal(outcome('vm:web-0a0b0c'), 'removed');
  t.notOk(existsSync(deadRun), "the dead run's VM work directory is gone");
  t.equal(outcome('vm:db-0d0e0f'), 'kept');
  t.ok(existsSync(unrecorded), 'the one without a record is kept until it is named');
  const overlay = join(state, 'overlays', gone.id);
  t.ok(existsSync(join(overlay, 'root.data')), 'the overlay with writes is kept');

  const again = json<ReconcileReport>(await cli(['cleanup', '--json'], state));
  t.same(
    ours(again).map((s) => [s.id, s.outcome?.action]),
    [
      ['vm:db-0d0e0f', 'kept'],
      ['vm:web-0d0e10', 'kept'],
      [`publication:${gone.id}`, 'kept'],
    ],
    'a second run finds only what it keeps',
  );
  const vm = json<ReconcileReport>(await cli(['cleanup', '--item', 'vm:db-0d0e0f', '--json'], state));
  t.equal(vm.stale.find((s) => s.id === 'vm:db-0d0e0f')?.outcome?.action, 'removed', 'named, it is removed');
  t.notOk(existsSync(unrecorded));
  json<ReconcileReport>(await cli(['cleanup', '--item', 'vm:web-0d0e10', '--json'], state));
  t.notOk(existsSync(forged), 'the forged one goes as a directory only');
  t.ok(existsSync('/etc/passwd'));

  const named = json<ReconcileReport>(await cli(['cleanup', '--item', `publication:${gone.id}`, '--discard-writes', '--json'], state));
  t.equal(named.stale.find((s) => s.id === `publication:${gone.id}`)?.outcome?.action, 'removed');
  t.notOk(existsSync(overlay), 'named with --discard-writes, its overlay is discarded');
  t.same(listPublications(state), [], 'and its record');
  t.same(ours(json<ReconcileReport>(await cli(['cleanup', '--dry-run', '--json'], state))), [], 'nothing stale remains');
});
