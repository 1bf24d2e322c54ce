/**
 * The publish CLI over a real repository (no guest boot): content, overlay
 * resume and discard, ENOSPC through the FUSE mount at the overlay limit,
 * bad input, and nothing left mounted afterwards.
 */
import t from 'tap';
import { chmodSync, existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exec } from '../../src/host/exec.js';
import { detachMount } from '../../src/fuse/mounts.js';
import { mountEntry } from '../../src/host/mounts.js';
import { listPublications, removePublication, type PublicationStatus } from '../../src/publish/publish.js';
import { processAlive } from '../../src/host/process.js';
import { NOBODY, probeAs } from '../helpers/as-user.js';
import { chunkFingerprint, cli, json, occurrences, webRepository, type PublishJson } from './fixtures/web.js';

const dir = mkdtempSync('/tmp/rlpubcli-');
const state = join(dir, 'state');
const mnt = join(dir, 'mnt');
const busy = join(dir, 'busy');
const { repo, point, image } = await webRepository(dir);
const before = chunkFingerprint(repo);

t.teardown(async () => {
  for (const p of listPublications(state)) await removePublication(state, p.id, { discard: true, as: p.owner }).catch(() => undefined);
  for (const m of [mnt, busy]) if (mountEntry(m)) await detachMount(m);
  rmSync(dir, { recursive: true, force: true });
});

const publish = (...extra: string[]): Promise<PublishJson> =>
  cli(['publish', '--repo', repo, point.id, '--fuse', mnt, '--background', '--json', ...extra], state).then((r) => json<PublishJson>(r));

t.test('publish shows the point, keeps writes for --resume, forgets them without', async (t) => {
  let pub = await publish();
  t.equal(pub.publication, `web-${point.id}`);
  t.equal(pub.path, join(mnt, pub.publication));
  const raw = pub.disks.root!;
  t.equal(raw, join(pub.path, 'root.raw'));
  t.equal((await exec('cmp', [raw, image])).code, 0, 'the published disk has the bytes of the backed-up image');
  const list = json<{ publications: Array<{ id: string; running: boolean; pid?: number }> }>(await cli(['publications', '--json'], state));
  t.same(
    list.publications.map((p) => [p.id, p.running]),
    [[pub.publication, true]],
  );
  const environ = readFileSync(`/proc/${list.publications[0]?.pid}/environ`, 'utf8').split('\0');
  t.ok(
    environ.includes('MALLOC_MMAP_THRESHOLD_=131072'),
    'the background publisher runs with large buffers in their own mappings (src/host/malloc.ts)',
  );

  const w = await exec('sh', ['-c', `printf 'publish-cli-marker' | dd of=${raw} bs=4096 seek=100 conv=notrunc,fsync status=none`]);
  t.equal(w.code, 0, w.stderr);
  t.equal(await occurrences(raw, 'publish-cli-marker'), 1);
  json(await cli(['unpublish', pub.publication, '--json'], state));
  t.equal(mountEntry(mnt), undefined, 'unpublish leaves no FUSE mount');

  pub = await publish('--resume');
  t.equal(await occurrences(pub.disks.root!, 'publish-cli-marker'), 1, 'resume shows the write');
  json(await cli(['unpublish', pub.publication, '--json'], state));
  pub = await publish();
  t.equal((await exec('cmp', [pub.disks.root!, image])).code, 0, 'without --resume: the original content');
  json(await cli(['unpublish', pub.publication, '--discard', '--json'], state));
  t.equal(mountEntry(mnt), undefined);
  t.same(listPublications(state), [], 'discard forgets the publication');
  t.equal(chunkFingerprint(repo), before, 'the repository chunks are byte-identical');
});

t.test('at the overlay limit dd through the mount gets ENOSPC and nothing is corrupted', async (t) => {
  const pub = await publish('--overlay-limit', '1M');
  const raw = pub.disks.root!;
  const dd = await exec('dd', ['if=/dev/zero', `of=${raw}`, 'bs=256k', 'count=8', 'seek=8', 'conv=notrunc,fsync']);
  t.not(dd.code, 0, 'dd fails');
  t.match(dd.stderr, /No space left on device/);
  const df = await exec('stat', ['-f', '-c', '%a', raw]);
  t.equal(df.stdout.trim(), '0', 'statfs: no space left');
  json(await cli(['unpublish', pub.publication, '--json'], state));
  const again = await publish('--resume');
  const cmpHead = await exec('cmp', ['-n', String(2 * 1024 * 1024), again.disks.root!, image]);
  t.equal(cmpHead.code, 0, 'below the writes: untouched');
  const zeros = await exec('sh', [
    '-c',
    `dd if=${again.disks.root!} bs=256k skip=8 count=4 status=none | cmp -s - /dev/zero -n ${1024 * 1024} && echo zero`,
  ]);
  t.equal(zeros.stdout.trim(), 'zero', 'the accepted 1 MiB is there after a restart');
  const tail = await exec('cmp', ['-i', String(3 * 1024 * 1024), again.disks.root!, image]);
  t.equal(tail.code, 0, 'past the limit: the original bytes');
  json(await cli(['unpublish', again.publication, '--discard', '--json'], state));
  t.equal(chunkFingerprint(repo), before);
});

t.test('bad input: unknown point, busy point, a mount point in use; nothing left behind', async (t) => {
  const unknown = await cli(['publish', '--repo', repo, '20200101T000000Z-000000', '--fuse', mnt, '--json'], state);
  t.equal(unknown.code, 5);
  t.match(unknown.stdout, /POINT_NOT_FOUND/);
  mkdirSync(busy, { recursive: true });
  t.equal((await exec('mount', ['-t', 'tmpfs', 'none', busy])).code, 0);
  const inUse = await cli(['publish', '--repo', repo, point.id, '--fuse', busy, '--json'], state);
  t.equal(inUse.code, 6);
  t.match(inUse.stdout, /MOUNT_POINT_IN_USE/);
  t.equal(mountEntry(busy)?.fstype, 'tmpfs', 'the other mount is untouched');
  await exec('umount', [busy]);
  const pub = await publish();
  const twice = await cli(['publish', '--repo', repo, point.id, '--fuse', join(dir, 'other'), '--json'], state);
  t.equal(twice.code, 6);
  t.match(twice.stdout, /PUBLICATION_BUSY/);
  const notThere = await cli(['unpublish', 'nope', '--json'], state);
  t.equal(notThere.code, 5);
  json(await cli(['unpublish', pub.publication, '--discard', '--json'], state));
  t.equal(mountEntry(mnt), undefined);
  t.equal(mountEntry(join(dir, 'other')), undefined);
});

t.test('a background publisher that dies keeps its log, and what the user sees names it', async (t) => {
  // Killed once it published: its log has moved into the publication's state directory.
  const pub = (await publish()) as PublishJson & { log?: string };
  const log = join(state, 'publications', pub.publication, 'publisher.log');
  t.equal(pub.log, log, 'the result names the log');
  const pid = listPublications(state).find((p) => p.id === pub.publication)?.pid;
  if (pid === undefined) throw new Error('the publisher records no pid');
  process.kill(pid, 'SIGKILL');
  const deadline = Date.now() + 30_000;
  while (processAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.notOk(processAlive(pid), 'the publisher is dead');
  t.ok(existsSync(log), 'its log is kept');
  t.match(readFileSync(log, 'utf8'), `"publication":"${pub.publication}"`, 'and holds what it wrote');
  const listed = await cli(['publications'], state);
  t.match(listed.stdout, `${pub.publication}  publisher died (log: ${log})`, 'the listing names the log');
  const st = json<{ publications: PublicationStatus[] }>(await cli(['publications', '--json'], state)).publications[0];
  t.same([st?.running, st?.crashed, st?.log], [false, true, log]);
  const un = json<{ crashed?: boolean; log?: string }>(await cli(['unpublish', pub.publication, '--json'], state));
  t.same([un.crashed, un.log], [true, log], 'unpublish names it too');
  t.equal(mountEntry(mnt), undefined, 'the dead FUSE mount is gone');
  t.ok(existsSync(log), 'kept until the publication is discarded');
  json(await cli(['unpublish', pub.publication, '--discard', '--json'], state));
  t.notOk(existsSync(log), 'discard takes it with the rest');

  // Failing before it published: the log stays where it was, and the error names it.
  const bad = await cli(['publish', '--repo', repo, '20200101T000000Z-000000', '--fuse', mnt, '--background', '--json'], state);
  t.equal(bad.code, 5);
  const err = (JSON.parse(bad.stdout.trim().split('\n').at(-1) ?? '{}') as { error?: { code: string; hint?: string } }).error;
  t.equal(err?.code, 'POINT_NOT_FOUND');
  const named = /the publisher's log: (\S+)/.exec(err?.hint ?? '')?.[1];
  t.ok(named?.startsWith(join(state, 'publications', '.publish-')), `the hint names the log: ${err?.hint}`);
  t.match(readFileSync(named ?? '/nonexistent', 'utf8'), /POINT_NOT_FOUND/, "which holds the publisher's own report");
  t.equal(mountEntry(mnt), undefined);
});

t.test("the published disks are the publisher's alone, or shared with the group of --fuse-group / config fuse.group", async (t) => {
  chmodSync(dir, 0o755); // only the mount's own policy decides what nobody gets
  const ownerOnly = await publish();
  const raw = ownerOnly.disks.root!;
  t.same([statSync(raw).mode & 0o7777, statSync(raw).uid], [0o600, 0], "without a group: 0600, root's");
  t.same(
    await probeAs(NOBODY, [
      ['read', raw],
      ['write', raw],
    ]),
    ['EACCES', 'EACCES'],
    'nobody gets nothing',
  );
  json(await cli(['unpublish', ownerOnly.publication, '--json'], state));

  const config = join(dir, 'fuse-group.json');
  writeFileSync(config, JSON.stringify({ fuse: { group: 'nogroup' } }));
  const shared = json<PublishJson>(
    await cli(['--config', config, 'publish', '--repo', repo, point.id, '--fuse', mnt, '--background', '--json'], state),
  );
  const st = statSync(shared.disks.root!);
  t.same([st.mode & 0o7777, st.gid], [0o660, 65534], 'config fuse.group: 0660 with that group');
  t.same(
    await probeAs(NOBODY, [
      ['read', shared.disks.root!],
      ['write', shared.disks.root!],
    ]),
    ['ok', 'ok'],
    'a member reads and writes',
  );
  json(await cli(['unpublish', shared.publication, '--json'], state));

  const flag = await publish('--fuse-group', '65533');
  t.equal(statSync(flag.disks.root!).gid, 65533, '--fuse-group takes a numeric gid');
  t.same(await probeAs(NOBODY, [['read', flag.disks.root!]]), ['EACCES'], 'and nobody is not in it');
  json(await cli(['unpublish', flag.publication, '--discard', '--json'], state));

  const unknown = await cli(['publish', '--repo', repo, point.id, '--fuse', mnt, '--fuse-group', 'no-such-group-rl', '--json'], state);
  t.equal(unknown.code, 2);
  t.match(unknown.stdout, /GROUP_UNKNOWN/);
  t.equal(mountEntry(mnt), undefined, 'nothing mounted');
});
