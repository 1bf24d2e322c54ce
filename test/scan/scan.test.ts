// `restorelab scan` end to end, with real YARA over real read-only mounts of
// restore points: a copy of the web test guest is backed up three times, with
// a file the test rule matches planted before the second backup and one more
// file changed before the third. The scan names the file (rule, disk,
// partition, path, sha256); the third point is suspect until scanned; the
// second scan of a point with one changed file scans one file; --last-clean
// names the first point; a bad rule file and a point with no known
// filesystem fail clearly and leave nothing mounted. Unchanged files of a
// point are not read at all (same extents in unchanged chunks of a scanned
// point), while a file rewritten in place under its old size, extents and
// mtime is read and found. xfs on GPT is scanned
// too, and a guest symlink to a host file is not followed.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
  writeSync,
  readdirSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { backupVm } from '../../src/backup/engine.js';
import { initRepository } from '../../src/repo/repository.js';
import { listSessions } from '../../src/flr/session.js';
import { releaseJournal } from '../../src/flr/mount.js';
import { listPublications } from '../../src/publish/publish.js';
import { buildGptXfsDisk, buildUnknownFsDisk } from '../flr/fixtures/disks.js';
import { PLANTED_MARKER, PLANTED_PATH, TEST_RULES, changeGuest, plantedContent, plantedGuest, sha256 } from '../helpers/planted-guest.js';

for (const tool of ['yara', 'yarac', 'losetup', 'mount']) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
    throw new Error(`the scan tests need ${tool}: apt-get install yara (scripts/setup installs it)`);
}

const bin = fileURLToPath(new URL('../../../bin/restorelab.js', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'scan-test-'));
const stateDir = join(work, 'state');
const env = { ...process.env, RESTORELAB_STATE_DIR: stateDir };
const guest = await plantedGuest(work);
const [p1, p2, p3] = guest.points.map((p) => p.id) as [string, string, string];
const rules = join(work, 'test.yar');
writeFileSync(rules, TEST_RULES);

function mountInfo(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[4] ?? '');
}

/** Mounts, loop devices, flr sessions and publications this test could have left. */
function leftovers(): { mounts: string[]; loops: string[]; sessions: number; publications: number; scratch: string[] } {
  let scratch: string[] = [];
  try {
    scratch = readdirSync(join(stateDir, 'flr')).filter((n) => n.startsWith('scan-'));
  } catch {
    // no flr directory yet
  }
  return {
    mounts: mountInfo().filter((p) => p.startsWith(work)),
    loops: spawnSync('losetup', ['-a'], { encoding: 'utf8' })
      .stdout.split('\n')
      .filter((l) => l.includes(work)),
    sessions: listSessions(stateDir).length,
    publications: listPublications(stateDir).length,
    scratch,
  };
}
const NOTHING = { mounts: [], loops: [], sessions: 0, publications: 0, scratch: [] };

function cli(args: string[]): { status: number | null; json: Record<string, unknown>; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args, '--json'], { encoding: 'utf8', env, timeout: 600_000 });
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    json = { unparsable: r.stdout };
  }
  return { status: r.status, json, stderr: r.stderr };
}

function statuses(repo = guest.repoDir): Record<string, string> {
  const r = cli(['points', '--repo', repo]);
  return Object.fromEntries((r.json.points as { id: string; scan: string }[]).map((p) => [p.id, p.scan]));
}

t.teardown(async () => {
  for (const s of listSessions(stateDir)) await releaseJournal(s).catch(() => undefined);
  for (const m of mountInfo()
    .filter((p) => p.startsWith(work))
    .reverse())
    spawnSync('umount', ['-l', m]);
  for (const l of spawnSync('losetup', ['-a'], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter((x) => x.includes(work)))
    spawnSync('losetup', ['-d', l.split(':')[0]!]);
  rmSync(work, { recursive: true, force: true });
});

let filesInPoint = 0;

t.test('the infected second point: the scan names the planted file, exit 3', async (t) => {
  t.same(statuses(), { [p1]: 'unscanned', [p2]: 'unscanned', [p3]: 'unscanned' }, 'nothing scanned yet');
  const r = cli(['scan', '--repo', guest.repoDir, p2, '--yara', rules]);
  t.equal(r.status, 3, r.stderr);
  t.equal(r.json.point, p2);
  t.equal(r.json.verdict, 'infected');
  t.same(r.json.matches, [
    { rule: 'RestorelabTestDropper', disk: 'root', partition: 1, path: PLANTED_PATH, sha256: sha256(plantedContent()) },
  ]);
  const files = r.json.files as { scanned: number; cached: number };
  t.ok(files.scanned > 20, `yara read the guest's files (${files.scanned})`);
  filesInPoint = files.scanned + files.cached;
  t.same(leftovers(), NOTHING, 'the temporary mount is gone');
  t.same(statuses(), { [p1]: 'unscanned', [p2]: 'infected', [p3]: 'suspect' }, 'the point after the infected one is suspect until scanned');
});

t.test('the third point differs by one file: only that file is scanned, the rest comes from the cache', async (t) => {
  const r = cli(['scan', '--repo', guest.repoDir, p3, '--yara', rules]);
  t.equal(r.status, 3, r.stderr);
  t.same(r.json.files, { scanned: 1, cached: filesInPoint - 1 }, 'one file changed, one file scanned');
  const unread = r.json.unread as number;
  t.ok(
    unread > filesInPoint / 2 && unread < filesInPoint,
    `most files were not even read: unchanged extents in unchanged chunks of the second point (${unread} of ${filesInPoint})`,
  );
  t.match(r.json.matches, [{ path: PLANTED_PATH, rule: 'RestorelabTestDropper' }], 'a cached verdict still names the file where it is now');
  t.same(statuses(), { [p1]: 'unscanned', [p2]: 'infected', [p3]: 'infected' });
});

t.test('--last-clean scans newest first and names the first point', async (t) => {
  const r = cli(['scan', '--repo', guest.repoDir, guest.vm.name, '--yara', rules, '--last-clean']);
  t.equal(r.status, 0, r.stderr);
  t.same(r.json, {
    vm: guest.vm.name,
    lastClean: p1,
    points: [
      { id: p3, verdict: 'infected' },
      { id: p2, verdict: 'infected' },
      { id: p1, verdict: 'clean' },
    ],
  });
  t.same(statuses(), { [p1]: 'clean', [p2]: 'infected', [p3]: 'infected' });
  t.same(leftovers(), NOTHING);
});

t.test('a file rewritten in place (same size, same extents, old mtime) is read again and its new content found', async (t) => {
  const target = '/etc/inittab';
  let before = '';
  let after = '';
  const extents = (root: string): string =>
    execFileSync('filefrag', ['-e', '-b1', join(root, target)], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => /^\s*\d+:/.test(l))
      .join('\n');
  changeGuest(guest.image, (root) => {
    const file = join(root, target);
    const st = statSync(file);
    before = extents(root);
    const fd = openSync(file, 'r+');
    try {
      writeSync(fd, Buffer.from(`# ${PLANTED_MARKER}\n`), 0, undefined, 0);
    } finally {
      closeSync(fd);
    }
    utimesSync(file, st.atime, st.mtime);
    t.equal(statSync(file).size, st.size, 'same size');
    after = extents(root);
  });
  t.ok(before.length > 0, before);
  t.equal(after, before, 'the guest kept the file where it was: only the chunk under it changed');
  const p4 = (
    await backupVm({ repo: guest.repository, vm: guest.vm, disks: { [guest.vm.disks[0]!.name]: guest.image }, source: guest.image })
  ).id;
  const r = cli(['scan', '--repo', guest.repoDir, p4, '--yara', rules]);
  t.equal(r.status, 3, r.stderr);
  t.match(r.json.matches, [{ path: target, rule: 'RestorelabTestDropper' }, { path: PLANTED_PATH }]);
  t.equal((r.json.matches as unknown[]).length, 2);
  t.ok((r.json.files as { scanned: number }).scanned >= 1, 'the rewritten file was read by yara');
  t.ok((r.json.unread as number) > 0, "other files still came from the third point's map");
  t.same(leftovers(), NOTHING);
});

t.test("a rule file that does not compile: exit 2 with yarac's reason, nothing mounted", async (t) => {
  const bad = join(work, 'bad.yar');
  writeFileSync(bad, 'rule Broken { strings: $a = "x" condition: $b }\n');
  const r = cli(['scan', '--repo', guest.repoDir, p1, '--yara', bad]);
  t.equal(r.status, 2, r.stderr);
  t.match(r.json, { ok: false, error: { code: 'YARA_RULES_INVALID', message: /bad\.yar.*\$b/ } });
  t.same(leftovers(), NOTHING);
  const missing = cli(['scan', '--repo', guest.repoDir, p1, '--yara', join(work, 'nope.yar')]);
  t.equal(missing.status, 5);
  t.match(missing.json, { error: { code: 'YARA_RULES_NOT_FOUND' } });
  const unknown = cli(['scan', '--repo', guest.repoDir, 'no-such-thing', '--yara', rules]);
  t.equal(unknown.status, 5);
  t.match(unknown.json, { error: { code: 'TARGET_NOT_FOUND' } });
});

t.test('a point with no filesystem we know: UNKNOWN_FILESYSTEM, nothing mounted, nothing recorded', async (t) => {
  const repoDir = join(work, 'repo-unknown');
  const repo = await initRepository(repoDir);
  const point = await backupVm({
    repo,
    vm: { name: 'mystery', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sda', format: 'raw' }], nics: [] },
    disks: { sda: buildUnknownFsDisk(work) },
  });
  const r = cli(['scan', '--repo', repoDir, point.id, '--yara', rules]);
  t.equal(r.status, 2, r.stderr);
  t.match(r.json, { ok: false, error: { code: 'UNKNOWN_FILESYSTEM' } });
  t.same(leftovers(), NOTHING);
  t.same(statuses(repoDir), { [point.id]: 'unscanned' });
});

t.test('xfs on GPT is scanned; a guest symlink to a host file is not followed', async (t) => {
  const repoDir = join(work, 'repo-xfs');
  const repo = await initRepository(repoDir);
  const disk = buildGptXfsDisk(work);
  const point = await backupVm({
    repo,
    vm: { name: 'xfs-guest', memoryMiB: 256, vcpus: 1, disks: [{ name: 'sdb', format: 'raw' }], nics: [] },
    disks: { sdb: disk.path },
  });
  const xfsRules = join(work, 'xfs.yar');
  // The guest tree holds /passwd-link -> /etc/passwd and a link climbing out to it: the host's
  // passwd must not be read through them, while the guest's own readme is found.
  writeFileSync(
    xfsRules,
    `rule GuestReadme { strings: $a = "inside the backup only" condition: $a }
rule HostPasswd { strings: $a = "root:x:0:0:" condition: $a }
`,
  );
  t.match(readFileSync('/etc/passwd', 'utf8'), /root:x:0:0:/, 'the host file the links point to would match');
  const r = cli(['scan', '--repo', repoDir, point.id, '--yara', xfsRules]);
  t.equal(r.status, 3, r.stderr);
  t.same(r.json.matches, [
    { rule: 'GuestReadme', disk: 'sdb', partition: 1, path: '/data/docs/readme.txt', sha256: disk.files.sha256['/data/docs/readme.txt'] },
  ]);
  t.match(r.json.partitions, [{ disk: 'sdb', partition: 1, fstype: 'xfs', files: 4 }]);
  t.same(r.json.files, { scanned: 4, cached: 0 }, 'the four regular files of the tree, no symlink');
  t.same(leftovers(), NOTHING);
});
