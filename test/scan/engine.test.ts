// The scan engine on a plain directory tree, with real yara and a real
// SQLite catalog: the walk yields regular files only (no symlink followed,
// not even one to a host file the rule would match; FIFOs left alone; a
// filesystem mounted inside not entered), names that are not UTF-8 or hold
// a newline are scanned, identical content is scanned once, and a second
// scan is answered from the verdict cache, which a changed rule set misses.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectCatalog } from '../../src/catalog/catalog.js';
import { compileRules } from '../../src/scan/yara.js';
import { walkRegularFiles } from '../../src/scan/walk.js';
import { scanPartitions } from '../../src/scan/scan.js';
import { VerdictCache } from '../../src/scan/store.js';
import { sha256 } from '../helpers/planted-guest.js';

const work = mkdtempSync(join(tmpdir(), 'scan-engine-'));
const root = join(work, 'tree');
const MARK = 'ENGINE-TEST-MARK-77';
mkdirSync(join(root, 'a/b'), { recursive: true });
writeFileSync(join(root, 'a/clean.txt'), 'nothing to see\n');
writeFileSync(join(root, 'a/b/hit.bin'), `xx ${MARK} yy`);
writeFileSync(join(root, 'a/copy-of-hit.bin'), `xx ${MARK} yy`);
const odd = Buffer.concat([Buffer.from(join(root, 'a/')), Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x62, 0x69, 0x6e])]);
writeFileSync(odd, `${MARK} in a name that is not UTF-8`);
writeFileSync(join(root, 'a/new\nline.bin'), `${MARK} in a name with a newline`);
symlinkSync('/etc/passwd', join(root, 'passwd-link'));
symlinkSync('../../../../../../etc/passwd', join(root, 'a/climb-link'));
spawnSync('mkfifo', [join(root, 'a/fifo')]);
mkdirSync(join(root, 'inner-mount'));
const tmpfs = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', join(root, 'inner-mount')]).status === 0;
if (tmpfs) writeFileSync(join(root, 'inner-mount/other-fs.txt'), MARK);

const catalog = await connectCatalog(join(work, 'catalog.sqlite'));
const rulesFile = join(work, 'r.yar');
writeFileSync(
  rulesFile,
  `rule Mark { strings: $a = "${MARK}" condition: $a }\nrule HostPasswd { strings: $a = "root:x:0:0:" condition: $a }\n`,
);

t.teardown(async () => {
  await catalog.close();
  if (tmpfs) spawnSync('umount', [join(root, 'inner-mount')]);
  rmSync(work, { recursive: true, force: true });
});

t.test('the walk yields regular files of the root filesystem only', async (t) => {
  t.ok(tmpfs, 'a tmpfs is mounted inside the tree');
  const seen: string[] = [];
  for await (const f of walkRegularFiles(root)) seen.push(f.guestPath.toString('latin1'));
  t.same(seen.sort(), ['/a/b/hit.bin', '/a/clean.txt', '/a/copy-of-hit.bin', '/a/f\xff\xfe.bin', '/a/new\nline.bin'].sort());
});

t.test('scan, cache, rule-set change', async (t) => {
  const rules = await compileRules(rulesFile, work);
  t.teardown(() => rules.dispose());
  const mounts = [{ disk: 'sda', partition: 1, fstype: 'test', path: root }];
  const first = await scanPartitions(mounts, rules, await VerdictCache.open(catalog, rules.hash));
  t.same(first.files, { scanned: 4, cached: 1 }, "the copy of hit.bin is answered by its twin's verdict");
  t.same(
    first.matches.map((m) => [m.rule, m.path]),
    [
      ['Mark', '/a/b/hit.bin'],
      ['Mark', '/a/copy-of-hit.bin'],
      ['Mark', '/a/f\ufffd\ufffd.bin'],
      ['Mark', '/a/new\nline.bin'],
    ],
    'every planted copy, whatever its name; no host passwd through the links',
  );
  t.equal(first.matches[0]!.sha256, sha256(`xx ${MARK} yy`));
  const again = await scanPartitions(mounts, rules, await VerdictCache.open(catalog, rules.hash));
  t.same(again.files, { scanned: 0, cached: 5 }, 'a second scan reads nothing with yara');
  t.same(again.matches, first.matches, 'and gives the same answer');

  writeFileSync(rulesFile, `rule Mark { strings: $a = "${MARK}" condition: $a }\n`);
  const changed = await compileRules(rulesFile, work);
  t.teardown(() => changed.dispose());
  t.not(changed.hash, rules.hash);
  const third = await scanPartitions(mounts, changed, await VerdictCache.open(catalog, changed.hash));
  t.same(third.files, { scanned: 4, cached: 1 }, 'another rule set is another cache');
});
