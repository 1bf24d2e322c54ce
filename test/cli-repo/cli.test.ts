import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { openRepository } from '../../src/repo/index.js';
import { guestImage } from '../helpers/guests.js';
import { changeRegions, sha256File } from '../backup/fixtures/images.js';
import { chunkFiles } from '../backup/fixtures/repo-state.js';
import { settle } from '../helpers/ready.js';

const MiB = 1024 * 1024;
const work = await mkdtemp(join(tmpdir(), 'rl-cli-repo-'));
t.teardown(() => rm(work, { recursive: true, force: true }));
const env = { ...process.env, RESTORELAB_HOME: work, RESTORELAB_STATE_DIR: join(work, 'state') };
const bin = projectPath('bin', 'restorelab.js');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  json: Record<string, unknown>;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      let json: Record<string, unknown> = {};
      try {
        json = JSON.parse(stdout) as Record<string, unknown>;
      } catch {
        // not every call asks for --json
      }
      resolve({ code, stdout, stderr, json });
    });
  });
}

/** A file of `sizeMiB` random MiB: nothing in it dedups or compresses. */
async function randomImage(path: string, sizeMiB: number): Promise<void> {
  const fh = await open(path, 'w');
  for (let i = 0; i < sizeMiB; i += 16) await fh.write(randomBytes(16 * MiB));
  await fh.close();
}

async function vmFile(name: string): Promise<string> {
  const p = join(work, `${name}.json`);
  await writeFile(p, JSON.stringify({ name, memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
  return p;
}

t.test('commands print the documented --json shapes', async (t) => {
  const repo = join(work, 'shapes');
  const init = await cli(['repo', 'init', repo, '--chunk-size', '1M', '--json']);
  t.equal(init.code, 0, init.stderr);
  t.match(init.json, { path: repo, version: 1, chunkSize: MiB, encryption: 'none' });
  const web = await guestImage('web');
  const b = await cli(['backup', '--repo', repo, '--vm', await vmFile('web'), '--disk', `root=${web}`, '--json']);
  t.equal(b.code, 0, b.stderr);
  t.same(Object.keys(b.json).sort(), ['afterBackup', 'consistency', 'restorePoint', 'signals', 'stats', 'vm']);
  t.equal(b.json.afterBackup, null, 'no afterBackup job covers it: nothing triggered');
  t.same(Object.keys(b.json.stats as object).sort(), ['bytesNew', 'bytesRead', 'bytesReused', 'bytesZero', 'seconds']);
  t.equal(b.json.vm, 'web');
  const id = b.json.restorePoint as string;
  const pts = await cli(['points', '--repo', repo, '--vm', 'web', '--json']);
  t.equal(pts.code, 0, pts.stderr);
  t.match(pts.json, { points: [{ id, vm: 'web', disks: [{ name: 'root', size: 64 * MiB }], damaged: false }] });
  t.same((await cli(['points', '--repo', repo, '--vm', 'other', '--json'])).json.points, [], '--vm filters');
  const v = await cli(['verify', '--repo', repo, '--json']);
  t.equal(v.code, 0, v.stderr);
  t.match(v.json, { ok: true, corrupt: [], affectedPoints: [] });
  t.ok((v.json.chunksChecked as number) > 0);
  const to = join(work, 'shapes-out.qcow2');
  const r = await cli(['restore', '--repo', repo, id, '--disk', 'root', '--to', to, '--format', 'qcow2', '--json']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.json, { point: id, disk: 'root', to, format: 'qcow2', size: 64 * MiB });
  const p = await cli(['prune', '--repo', repo, '--keep-last', '1', '--dry-run', '--json']);
  t.equal(p.code, 0, p.stdout + p.stderr);
  t.match(p.json, { dryRun: true, kept: [{ id }], removed: [] });
  const g = await cli(['gc', '--repo', repo, '--json']);
  t.equal(g.code, 0, g.stderr);
  t.match(g.json, { chunksRemoved: 0, bytesFreed: 0 });
  const re = await cli(['repo', 'reindex', '--repo', repo, '--json']);
  t.match(re.json, { points: 1 });

  // Errors: one JSON document with a code, and the documented exit code.
  const missing = await cli(['points', '--repo', join(work, 'nowhere'), '--json']);
  t.equal(missing.code, 5);
  t.match(missing.json, { ok: false, error: { code: 'REPO_NOT_FOUND' } });
  const badVm = join(work, 'bad-vm.json');
  await writeFile(badVm, '{"name": "x"}');
  const bad = await cli(['backup', '--repo', repo, '--vm', badVm, '--json']);
  t.equal(bad.code, 2);
  t.match(bad.json, { ok: false, error: { message: /memoryMiB/ } });
  const noDisk = await cli(['backup', '--repo', repo, '--vm', await vmFile('lonely'), '--json']);
  t.equal(noDisk.code, 2);
  t.match(noDisk.json, { error: { code: 'BACKUP_DISK_MISSING' } });
});

t.test('a flipped byte: verify names the chunk and the points, reads fail, never wrong data', async (t) => {
  const repo = join(work, 'flip');
  await cli(['repo', 'init', repo]);
  const web = await guestImage('web');
  const vm = await vmFile('web');
  const id1 = (await cli(['backup', '--repo', repo, '--vm', vm, '--disk', web, '--json'])).json.restorePoint as string;
  const id2 = (await cli(['backup', '--repo', repo, '--vm', vm, '--disk', web, '--json'])).json.restorePoint as string;
  const victim = (await chunkFiles(repo))[0] as string;
  const file = join(repo, 'chunks', victim);
  const blob = await readFile(file);
  blob[blob.length - 10] = (blob[blob.length - 10] as number) ^ 0xff;
  await writeFile(file, blob);
  const digest = victim.split('/')[1] as string;

  const v = await cli(['verify', '--repo', repo, '--json']);
  t.equal(v.code, 3, 'verify exits 3');
  t.match(v.json, { ok: false, corrupt: [{ digest, quarantined: true }] });
  t.same([...(v.json.affectedPoints as string[])].sort(), [id1, id2].sort(), 'both points that share the chunk are named');
  await t.resolves(stat(`${file}.bad`), 'the chunk is quarantined, not deleted');
  t.match((await cli(['points', '--repo', repo, '--json'])).json, { points: [{ damaged: true }, { damaged: true }] });

  const to = join(work, 'flip-out.raw');
  const r = await cli(['restore', '--repo', repo, id1, '--disk', 'root', '--to', to, '--json']);
  t.not(r.code, 0, 'restoring the damaged region fails');
  t.match(r.json, { ok: false, error: { code: 'RESTORE_CHUNK_CORRUPT', message: new RegExp(digest) } });
  await t.rejects(stat(to), 'no output file that looks like a good disk');
  const disk = await (await openRepository(repo)).openDisk(id1, 'root');
  let failed = 0;
  for (let i = 0; i < disk.chunkCount; i++) {
    if (disk.chunkId(i) === digest)
      await disk.readChunk(i).then(
        () => t.fail('served a corrupt chunk'),
        () => failed++,
      );
  }
  t.ok(failed > 0, 'reading the chunk rejects');
});

t.test('kill -9 during a backup leaves no visible point; the next backup and verify succeed', async (t) => {
  const repo = join(work, 'kill');
  await cli(['repo', 'init', repo, '--chunk-size', '256K']);
  const img = join(work, 'kill.raw');
  await randomImage(img, 384);
  const vm = await vmFile('victim');
  const child = spawn(process.execPath, [bin, 'backup', '--repo', repo, '--vm', vm, '--disk', img, '--json'], { env });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  let ended = false;
  const closed = new Promise((r) =>
    child.on('close', () => {
      ended = true;
      r(undefined);
    }),
  );
  await new Promise<void>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      if (d.toString().includes('backup victim/root')) resolve();
    });
    void closed.then(() => reject(new Error('the backup ended before it could be killed')));
  });
  // Kill it mid-way, once it has stored a good number of its 1536 chunks (a state, not a guessed delay).
  const WRITTEN = 64;
  let stored = 0;
  await settle(async () => ended || (stored = (await chunkFiles(repo)).length) >= WRITTEN, 120_000);
  t.notOk(ended, 'the backup still ran when killed');
  child.kill('SIGKILL');
  await closed;
  t.ok(stored >= WRITTEN && (await chunkFiles(repo)).length >= stored, `the killed backup had written chunks (${stored} when killed)`);
  t.same((await cli(['points', '--repo', repo, '--json'])).json.points, [], 'no restore point is visible');
  const b = await cli(['backup', '--repo', repo, '--vm', vm, '--disk', img, '--json']);
  t.equal(b.code, 0, b.stderr);
  t.ok((b.json.stats as { bytesReused: number }).bytesReused > 0, 'chunks the killed backup stored are reused');
  t.match(b.stderr, /removed a stale shared lock of dead process \d+/, "the dead backup's lock is reported");
  const v = await cli(['verify', '--repo', repo, '--json']);
  t.equal(v.code, 0, v.stdout);
  const out = join(work, 'kill-out.raw');
  t.equal((await cli(['restore', '--repo', repo, b.json.restorePoint as string, '--disk', 'root', '--to', out])).code, 0);
  t.equal(await sha256File(out), await sha256File(img), 'the new point restores the image');
});

t.test('prune then gc frees exactly the unreferenced chunks, with a backup running during gc', async (t) => {
  const repo = join(work, 'gc');
  await cli(['repo', 'init', repo, '--chunk-size', '256K']);
  const img = join(work, 'gc.raw');
  await randomImage(img, 32);
  const vm = await vmFile('gcvm');
  const id1 = (await cli(['backup', '--repo', repo, '--vm', vm, '--disk', img, '--json'])).json.restorePoint as string;
  await changeRegions(img, 256 * 1024, 8);
  const id2 = (await cli(['backup', '--repo', repo, '--vm', vm, '--disk', img, '--json'])).json.restorePoint as string;
  const r = await openRepository(repo);
  const referenced = async (id: string): Promise<Set<string>> => {
    const p = await r.getPoint(id);
    return new Set((await r.readIndex(p.disks[0]?.indexDigest as string)).digests.filter((d): d is string => d !== null));
  };
  const keep = await referenced(id2);
  const doomed = [...(await referenced(id1))].filter((d) => !keep.has(d));
  t.equal(doomed.length, 8, 'the first point alone references the 8 old versions of the changed chunks');

  const pr = await cli(['prune', '--repo', repo, '--keep-last', '1', '--json']);
  t.match(pr.json, { dryRun: false, removed: [{ id: id1 }], kept: [{ id: id2 }] });

  // Age every chunk by an hour: gc keeps chunks touched shortly before the oldest writer started (its safety margin),
  // and this test must not depend on how fast the backups above ran.
  const hourAgo = new Date(Date.now() - 3600_000);
  for (const f of await chunkFiles(repo)) await utimes(join(repo, 'chunks', f), hourAgo, hourAgo);

  // A backup of a new image runs while gc sweeps.
  const big = join(work, 'gc-big.raw');
  await randomImage(big, 256);
  const other = await vmFile('other');
  const child = spawn(process.execPath, [bin, 'backup', '--repo', repo, '--vm', other, '--disk', big, '--json'], { env });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<number | null>((resolve) => child.on('close', resolve));
  await new Promise<void>((resolve) =>
    child.stderr.on('data', (d: Buffer) => {
      if (d.toString().includes('backup other/root')) resolve();
    }),
  );
  const g = await cli(['gc', '--repo', repo, '--json']);
  t.equal(g.code, 0, g.stderr);
  t.equal(g.json.chunksRemoved, doomed.length, 'gc removes exactly the chunks only the pruned point used');
  t.equal(await done, 0, 'the concurrent backup succeeds');
  const chunks = new Set((await chunkFiles(repo)).map((f) => f.split('/')[1]));
  t.notOk(
    doomed.some((d) => chunks.has(d)),
    'the unreferenced chunks are gone',
  );
  t.ok(
    [...keep].every((d) => chunks.has(d)),
    'every chunk of the kept point is there',
  );
  const v = await cli(['verify', '--repo', repo, '--json']);
  t.equal(v.code, 0, `verify after gc: ${v.stdout}`);
  const id3 = (JSON.parse(out) as { restorePoint: string }).restorePoint;
  const restored = join(work, 'gc-out.raw');
  t.equal((await cli(['restore', '--repo', repo, id3, '--disk', 'root', '--to', restored])).code, 0);
  t.equal(await sha256File(restored), await sha256File(big), 'the point written during gc restores intact');
});
