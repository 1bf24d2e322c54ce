// `restorelab scan` sees inside what file-level restore opens beyond plain
// partitions: a guest whose root is an LVM logical volume, and a Windows
// NTFS partition (ntfs-3g where the kernel has no ntfs3). A file the rule
// matches there makes the point infected, named by its volume and path; a
// scan that skipped them would call the point clean.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { backupVm } from '../../src/backup/engine.js';
import { initRepository } from '../../src/repo/repository.js';
import { buildLvmDisk, buildNtfsDisk, mountsBelow, removeFlrWork } from '../flr/fixtures/disks.js';

const bin = fileURLToPath(new URL('../../../bin/restorelab.js', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'scan-volumes-test-'));
const stateDir = join(work, 'state');
const env = { ...process.env, RESTORELAB_STATE_DIR: stateDir };
const repoDir = join(work, 'repo');
const repo = await initRepository(repoDir);
const vm = (name: string, disk: string): Parameters<typeof backupVm>[0]['vm'] => ({
  name,
  memoryMiB: 256,
  vcpus: 1,
  disks: [{ name: disk, format: 'raw' }],
  nics: [],
});
const lvm = buildLvmDisk(work);
const ntfs = buildNtfsDisk(work);
const rules = join(work, 'volumes.yar');
// The LVM disk's root volume holds /data/docs/readme.txt, the NTFS disk report.txt (test/flr/fixtures/disks.ts).
writeFileSync(
  rules,
  [
    'rule InTheRootVolume { strings: $a = "inside the backup only" condition: $a }',
    'rule OnTheNtfsPartition { strings: $a = "quarterly figures" condition: $a }',
    '',
  ].join('\n'),
);

t.teardown(() => removeFlrWork(stateDir, work));

function scan(point: string): { status: number | null; json: Record<string, unknown>; stderr: string } {
  const r = spawnSync(process.execPath, [bin, 'scan', '--repo', repoDir, point, '--yara', rules, '--json'], {
    encoding: 'utf8',
    env,
    timeout: 600_000,
  });
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    json = { unparsable: r.stdout };
  }
  return { status: r.status, json, stderr: r.stderr };
}

t.test('a file on an LVM logical volume is scanned and found, in every point', async (t) => {
  const first = await backupVm({ repo, vm: vm('lvm-guest', 'vda'), disks: { vda: lvm.path } });
  const second = await backupVm({ repo, vm: vm('lvm-guest', 'vda'), disks: { vda: lvm.path } });
  for (const p of [first, second]) {
    const r = scan(p.id);
    t.equal(r.status, 3, `infected: exit 3 ${r.stderr}`);
    t.match(r.json, {
      verdict: 'infected',
      matches: [{ rule: 'InTheRootVolume', disk: 'vda', partition: 2, path: '/data/docs/readme.txt' }],
    });
    const parts = r.json.partitions as { partition: number; volume?: string; via: string; skipped?: string; files?: number }[];
    t.match(
      parts.find((x) => x.volume === 'guestvg/root'),
      { partition: 2, via: 'mount', files: Object.keys(lvm.files.sha256).length },
      'the root volume, every file',
    );
    t.match(parts.find((x) => x.volume === 'guestvg/var')?.skipped, /2 pieces/, 'the volume in two pieces is named, with why');
  }
  t.same(mountsBelow(work), [], 'nothing left mounted');
});

t.test('a file on an NTFS partition is scanned and found', async (t) => {
  const point = await backupVm({ repo, vm: vm('windows-guest', 'sda'), disks: { sda: ntfs.path } });
  const r = scan(point.id);
  t.equal(r.status, 3, `infected: exit 3 ${r.stderr}`);
  t.match(r.json, {
    verdict: 'infected',
    matches: [{ rule: 'OnTheNtfsPartition', disk: 'sda', partition: 1, path: '/Users/alice/Documents/report.txt' }],
  });
  t.match(r.json.partitions, [{ partition: 1, fstype: 'ntfs', via: 'mount' }]);
  t.equal(readFileSync('/proc/self/mountinfo', 'utf8').includes(work), false, 'nothing left mounted');
});
