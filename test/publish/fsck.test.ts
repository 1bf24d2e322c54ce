// The filesystem check the kill -9 test (guest.test.ts) applies to a guest
// disk after a crash, on images made here: a clean filesystem passes, one
// whose only damage is what an unclean shutdown leaves (wrong free counts)
// passes after the boot-time repair, and one with errors that repair does not
// touch (a cleared root inode) fails. Before, that test accepted e2fsck exit 4.
import t from 'tap';
import { join } from 'node:path';
import { exec, which } from '../../src/host/exec.js';
import { fsckAfterCrash } from './fixtures/fsck.js';

async function sh(cmd: string, args: string[], input?: string): Promise<void> {
  const r = await exec(cmd, args, { timeoutMs: 60_000, ...(input === undefined ? {} : { input }) });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

t.before(() => {
  for (const tool of ['mkfs.ext4', 'debugfs', 'truncate'])
    if (!which(tool)) throw new Error(`required system tool missing: ${tool} (apt-get install e2fsprogs coreutils)`);
});

t.test('a clean filesystem passes, whole-disk or in the first partition', async (t) => {
  const dir = t.testdir();
  const whole = join(dir, 'whole.img');
  await sh('truncate', ['-s', '16M', whole]);
  await sh('mkfs.ext4', ['-q', '-F', whole]);
  t.match(await fsckAfterCrash(whole, dir), { clean: true, preen: 0, check: 0 });
  const parted = join(dir, 'parted.img');
  await sh('truncate', ['-s', '24M', parted]);
  await sh('sfdisk', ['-q', parted], 'start=2048, type=83\n');
  await sh('mkfs.ext4', ['-q', '-F', '-E', 'offset=1048576', parted, '20M']);
  t.match(await fsckAfterCrash(parted, dir), { clean: true, preen: 0, check: 0 }, "the filesystem is found at the partition's start");
});

t.test('what a crash leaves is repaired as at boot; errors left uncorrected fail', async (t) => {
  const dir = t.testdir();
  const img = join(dir, 'fs.img');
  await sh('truncate', ['-s', '16M', img]);
  await sh('mkfs.ext4', ['-q', '-F', img]);
  await sh('debugfs', ['-w', '-R', 'set_super_value free_blocks_count 10', img]);
  t.match(
    await fsckAfterCrash(img, dir),
    { clean: true, preen: 1, check: 0 },
    'free counts are recomputed, as every unclean shutdown needs',
  );
  await sh('debugfs', ['-w', '-R', 'clri <2>', img]);
  const broken = await fsckAfterCrash(img, dir);
  t.match(broken, { clean: false, preen: 4 }, 'a cleared root inode is an error the boot-time repair leaves');
  t.match(broken.output, /UNEXPECTED INCONSISTENCY/);
  t.not(broken.check, 0);
});
