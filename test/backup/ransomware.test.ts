/**
 * Ransomware simulation (issue 17, item 5): a copy of the `web` test guest's
 * disk is loop-mounted at its partition's offset and changed between
 * backups: three ordinary nights (a few log files written), then a night on
 * which every regular file is overwritten in place with AES-encrypted bytes
 * (node crypto), as file-encrypting ransomware does. Each state is backed
 * up through the real CLI into a plain repository and through the library
 * into an encrypted one.
 *
 * Then: the encrypted night is an anomaly and no point before it is, in
 * `backup --json`, `points --json` and text, the API's point routes; the
 * encrypted repository holds the same figures, sealed in its manifests.
 *
 * Needs root, loop devices and mount (fdisk's sfdisk for the offset): run
 * under /tmp/rl-heavy.lock.
 */
import t from 'tap';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { lstat, open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import request from 'supertest';
import { exec } from '../../src/host/exec.js';
import { initRepository, openRepository } from '../../src/repo/index.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import type { PointSignals } from '../../src/repo/contract.js';
import { ENTROPY_MIN_RATIO } from '../../src/backup/signals.js';
import { guestImage } from '../helpers/guests.js';
import { testApi } from '../helpers/api.js';
import { cli as runCli, type Cli } from '../api/fixtures/cli.js';

const work = mkdtempSync('/tmp/rl-signals-');
const mnt = join(work, 'mnt');
const image = join(work, 'disk.raw');
const plainRepo = join(work, 'repo');
const sealedRepo = join(work, 'repo-sealed');
const keyFile = join(work, 'key');
const env = { RESTORELAB_HOME: join(work, 'home'), RESTORELAB_STATE_DIR: join(work, 'state') };
let mounted = false;

t.teardown(async () => {
  if (mounted) await exec('umount', [mnt]).catch(() => exec('umount', ['-l', mnt]).catch(() => undefined));
  rmSync(work, { recursive: true, force: true });
});

const cli = (args: string[]): Promise<Cli> => runCli(args, env);

/** Byte offset of the image's first partition (the guests have one, from sector 2048). */
async function partitionOffset(file: string): Promise<number> {
  const out = await exec('sfdisk', ['--json', file]);
  const table = JSON.parse(out.stdout) as { partitiontable: { sectorsize?: number; partitions: { start: number }[] } };
  const first = table.partitiontable.partitions[0];
  if (!first) throw new Error(`${file} has no partition`);
  return first.start * (table.partitiontable.sectorsize ?? 512);
}

/** Mounts the guest's file system read-write, runs `change` on it, unmounts (which flushes it to the image). */
async function changeGuest(offset: number, change: (root: string) => Promise<void>): Promise<void> {
  await exec('mount', ['-t', 'ext4', '-o', `loop,offset=${offset}`, image, mnt]);
  mounted = true;
  try {
    await change(mnt);
  } finally {
    await unmount();
  }
}

/** Unmounts the guest's file system; one that fails (busy for a moment) would leave writes unflushed, and the backup after it would read a half-changed image. */
async function unmount(): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const r = await exec('umount', [mnt]);
    if (r.code === 0) {
      if (attempt > 1) t.comment(`umount ${mnt} needed ${attempt} attempts`);
      break;
    }
    if (attempt === 20) throw new Error(`umount ${mnt} failed: ${r.stderr.trim()}`);
    await new Promise((res) => setTimeout(res, 250));
  }
  mounted = false;
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** An ordinary night: a few hundred KiB of log lines in new files. */
async function ordinaryNight(night: number): Promise<void> {
  const lines: string[] = [];
  for (let i = 0; i < 6000; i++)
    lines.push(
      `2026-12-0${night}T02:${String(i % 60).padStart(2, '0')}:00Z web httpd: GET /index.html 200 ${i % 977} bytes from 192.168.77.${i % 250}`,
    );
  mkdirSync(join(mnt, 'var', 'log'), { recursive: true });
  writeFileSync(join(mnt, 'var', 'log', `httpd.${night}.log`), lines.join('\n') + '\n');
  writeFileSync(join(mnt, 'etc', 'motd'), `night ${night}\n`);
}

/** Every regular file overwritten in place with its AES-256-CTR ciphertext under a key nobody keeps. */
async function encryptAll(root: string): Promise<{ files: number; bytes: number }> {
  const key = randomBytes(32);
  const seen = new Set<number>();
  let files = 0;
  let bytes = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const name of await readdir(dir)) {
      const p = join(dir, name);
      const st = await lstat(p);
      if (st.isDirectory()) {
        if (name !== 'lost+found') await walk(p);
        continue;
      }
      if (!st.isFile() || st.size === 0 || seen.has(st.ino)) continue;
      seen.add(st.ino);
      // extlinux marks its loader immutable: ransomware without CAP_LINUX_IMMUTABLE cannot touch it either.
      const fh = await open(p, 'r+').catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'EPERM') return undefined;
        throw err;
      });
      if (!fh) continue;
      try {
        const cipher = createCipheriv('aes-256-ctr', key, randomBytes(16));
        const buf = Buffer.alloc(1024 * 1024);
        for (let pos = 0; pos < st.size;) {
          const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
          if (bytesRead === 0) break;
          await fh.write(cipher.update(buf.subarray(0, bytesRead)), 0, bytesRead, pos);
          pos += bytesRead;
        }
      } finally {
        await fh.close();
      }
      files++;
      bytes += st.size;
    }
  };
  await walk(root);
  return { files, bytes };
}

t.test('a guest whose files get encrypted: that point is an anomaly, the ordinary ones before it are not', async (t) => {
  for (const tool of ['mount', 'umount', 'sfdisk']) {
    if (
      !existsSync(`/usr/bin/${tool}`) &&
      !existsSync(`/usr/sbin/${tool}`) &&
      !existsSync(`/bin/${tool}`) &&
      !existsSync(`/sbin/${tool}`)
    ) {
      t.fail(`${tool} is missing: install util-linux / fdisk (scripts/setup installs them)`);
      return;
    }
  }
  // With a private root mount, a QEMU started meanwhile in a mount namespace of its own (other tests: `ip netns
  // exec`, libvirt's namespaces) keeps a copy of the loop mount: our umount leaves the file system alive,
  // writing to the image seconds later (docs/operations.md, "Mount propagation").
  const propagation = (await exec('findmnt', ['-no', 'PROPAGATION', '/'])).stdout.trim();
  if (propagation === 'private') {
    t.fail('the root mount is private: run scripts/setup (it runs mount --make-rshared /, as systemd does; docs/operations.md)');
    return;
  }
  await exec('cp', ['--sparse=always', await guestImage('web'), image]);
  mkdirSync(mnt);
  const offset = await partitionOffset(image);
  const vmFile = join(work, 'ransim.json');
  writeFileSync(vmFile, JSON.stringify({ name: 'ransim', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
  const vm = loadVmDefinition(vmFile);
  t.equal((await cli(['repo', 'init', plainRepo, '--json'])).code, 0, 'plain repository created');
  const sealed = await initRepository(sealedRepo, { keyFile });

  const backups: { code: number | null; signals: PointSignals | null; stderr: string; id: string }[] = [];
  const backUp = async (): Promise<void> => {
    const r = await cli(['backup', '--repo', plainRepo, '--vm', vmFile, '--disk', `root=${image}`, '--no-after-backup', '--json']);
    const out = JSON.parse(r.stdout || '{}') as { restorePoint: string; signals: PointSignals | null };
    backups.push({ code: r.code, signals: out.signals, stderr: r.stderr, id: out.restorePoint });
    await backupVm({ repo: sealed, vm, disks: { root: image } });
  };

  await backUp();
  for (let night = 1; night <= 3; night++) {
    await changeGuest(offset, () => ordinaryNight(night));
    await backUp();
  }
  let encrypted = { files: 0, bytes: 0 };
  await changeGuest(offset, async (root) => {
    encrypted = await encryptAll(root);
  });
  t.ok(
    encrypted.files >= 10 && encrypted.bytes > 8 * 1024 * 1024,
    `the "ransomware" encrypted ${encrypted.files} files, ${encrypted.bytes} bytes`,
  );
  await backUp();

  t.same(
    backups.map((b) => b.code),
    [0, 0, 0, 0, 0],
    'every backup succeeded (an anomaly does not fail a backup)',
  );
  const sig = backups.map((b) => b.signals as PointSignals);
  t.ok(sig.every(Boolean), 'backup --json carries the signals');
  t.comment(
    sig
      .map(
        (s, i) =>
          `point ${i + 1}: changed ${s.changedBytes} (${(s.changeRate * 100).toFixed(1)} %), new ${s.newBytes}, ` +
          `${(s.incompressibleRatio * 100).toFixed(1)} % incompressible, anomaly ${s.anomaly}${s.reasons.length ? `: ${s.reasons.join('; ')}` : ''}`,
      )
      .join('\n'),
  );

  const [first, ...rest] = sig;
  const last = rest.pop() as PointSignals;
  t.equal(first?.full, true, 'the first backup says it is full');
  t.equal(first?.comparedWith, null);
  t.equal(first?.anomaly, false, 'the first backup is no anomaly');
  for (const [i, s] of rest.entries()) {
    t.equal(s.anomaly, false, `ordinary night ${i + 1} is no anomaly`);
    t.equal(s.full, false);
    t.equal(s.comparedWith, backups[i]?.id, 'compared with the point before');
    // On a 64 MiB disk with 1 MiB chunks, a log file plus the journal, bitmaps and inode table it touches is several chunks.
    t.ok(s.changedBytes > 0 && s.changeRate < 0.25, `ordinary night ${i + 1} changed a few chunks (${s.changedBytes} bytes)`);
    t.ok(s.incompressibleRatio < 0.5, `and its new data compresses (${s.incompressibleRatio} incompressible)`);
  }
  t.equal(last.anomaly, true, 'the encrypted night is an anomaly');
  // Not all of it: the journal, inode tables and bitmaps the rewrite touched are new chunks too, and they compress.
  t.ok(last.incompressibleRatio >= ENTROPY_MIN_RATIO, `its new data is mostly incompressible (${last.incompressibleRatio})`);
  t.ok(last.changedBytes >= encrypted.bytes * 0.9, 'the changed bytes cover the encrypted files');
  t.match(last.reasons.join(' '), /of the new data is incompressible/, 'the reason names the figures');
  t.equal(last.baseline.points, 4, 'judged against the four points before it');
  t.match(backups[4]?.stderr, /warning: restore point \S+ of ransim is a ransomware ANOMALY/, 'the backup warns on stderr');
  t.notMatch(
    backups
      .slice(0, 4)
      .map((b) => b.stderr)
      .join(''),
    /ANOMALY/,
    'the others do not',
  );

  await t.test('the encrypted night restores to the image it was taken from', async (t) => {
    // Tells a backup that read a half-written image (the test's fault) from one that stored it wrong.
    const out = join(work, 'restored.raw');
    const r = await cli(['restore', backups[4]?.id ?? '', '--repo', plainRepo, '--disk', 'root', '--to', out, '--json']);
    t.equal(r.code, 0, r.stderr);
    t.equal(await sha256(out), await sha256(image), 'byte for byte');
  });

  await t.test('points --json and text', async (t) => {
    const r = await cli(['points', '--repo', plainRepo, '--json']);
    t.equal(r.code, 0, r.stderr);
    const points = (JSON.parse(r.stdout) as { points: { id: string; signals: PointSignals }[] }).points;
    t.same(
      points.map((p) => p.id),
      backups.map((b) => b.id),
      'oldest first',
    );
    t.same(
      points.map((p) => p.signals.anomaly),
      [false, false, false, false, true],
    );
    t.same(
      points.map((p) => [p.signals.changedBytes, p.signals.incompressibleRatio]),
      sig.map((s) => [s.changedBytes, s.incompressibleRatio]),
      'the figures the backup printed',
    );
    const text = await cli(['points', '--repo', plainRepo]);
    const lines = text.stdout.trim().split('\n');
    t.equal(lines.length, 5);
    t.match(lines[0], /full, \d+\.\d% incompressible/);
    t.match(lines[1], /changed [\d.]+ \w+ \(\d+\.\d%\), \d+\.\d% incompressible/);
    t.same(
      lines.map((l) => l.includes('ANOMALY')),
      [false, false, false, false, true],
      'only the encrypted night says ANOMALY',
    );
  });

  await t.test('the API: /points and /points/:id', async (t) => {
    const api = await testApi({ env: { RESTORELAB_REPO: plainRepo } });
    t.teardown(() => api.close());
    const list = await request(api.app).get('/api/v1/points?vm=ransim').set('authorization', api.auth.viewer);
    t.equal(list.status, 200, JSON.stringify(list.body));
    const points = (list.body as { points: { id: string; signals: PointSignals }[] }).points;
    t.same(
      points.map((p) => p.signals.anomaly),
      [false, false, false, false, true],
    );
    const one = await request(api.app).get(`/api/v1/points/${backups[4]?.id}`).set('authorization', api.auth.viewer);
    t.equal(one.status, 200);
    const stats = (one.body as { stats: { signals: PointSignals } }).stats;
    t.equal(stats.signals.anomaly, true);
    t.same(stats.signals.reasons, last.reasons, 'with its reasons');
  });

  await t.test('the encrypted repository holds the same figures, sealed', async (t) => {
    const again = await openRepository(sealedRepo, { keyFile });
    const points = (await again.listPoints({ vm: 'ransim' })).sort((a, b) => a.time.localeCompare(b.time));
    const s = points.map((p) => p.stats.signals as PointSignals);
    t.same(
      s.map((x) => x.anomaly),
      [false, false, false, false, true],
      'the same verdicts',
    );
    t.same(
      s.map((x) => [x.changedBytes, x.newBytes, x.incompressibleBytes, x.full]),
      sig.map((x) => [x.changedBytes, x.newBytes, x.incompressibleBytes, x.full]),
      'the same changed, new and incompressible bytes as the plain repository: digests differ, the comparison does not',
    );
    const manifests = readdirSync(join(sealedRepo, 'points')).map((f) => readFileSync(join(sealedRepo, 'points', f)));
    t.equal(manifests.length, 5);
    t.notOk(
      manifests.some((m) => m.includes('incompressible') || m.includes('ransim')),
      'no manifest shows its signals (or VM) in plaintext',
    );
  });
});
