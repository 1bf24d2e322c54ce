/**
 * Issue #13 item 1: a hostile NFS client against a real publication. Our own
 * NFSv3 client (test/nfs/fixtures/nfs3-client.ts, no server code) talks over
 * loopback to a real NfsServer serving the PublicationDatastore of a real
 * publication (a small repository, an 8 MiB overlay limit). It plants
 * symlinks to host files and works through them, claims uid 0 to create
 * setuid files, and writes past the limit. The host files outside the
 * publication must not change, nothing setuid (or any symlink) may appear in
 * the state directory, and the limit must hold.
 */
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initRepository } from '../../src/repo/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import { projectPath } from '../../src/paths.js';
import { startPublication } from '../../src/publish/publish.js';
import { startServer } from '../nfs/fixtures/harness.js';
import { NFS3, Nfs3TestClient } from '../nfs/fixtures/nfs3-client.js';

const LIMIT = 8 * 1024 * 1024;
const TIB = 2 ** 40;
const ROOT_ONLY = { uid: 0, gid: 0 };
const LNK = 5;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rl-hostile-'));
const stateDir = path.join(dir, 'state');

// Canaries outside the publication: a root-only file, a directory with a file in it, and a name a dangling link points to.
const host = path.join(dir, 'host');
const secret = path.join(host, 'secret');
const rootDir = path.join(host, 'rootdir');
const victim = path.join(rootDir, 'victim');
const planted = path.join(rootDir, 'planted');
fs.mkdirSync(rootDir, { recursive: true, mode: 0o755 });
fs.writeFileSync(secret, 'root only\n', { mode: 0o600 });
fs.chmodSync(secret, 0o600);
fs.writeFileSync(victim, 'victim\n', { mode: 0o644 });
const past = new Date(1_600_000_000_000);
for (const f of [secret, victim, rootDir]) fs.utimesSync(f, past, past);

function fingerprint(): string {
  const one = (f: string): string => {
    const st = fs.lstatSync(f);
    return `${f} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.size} ${st.mtimeMs} ${st.isFile() ? crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex') : fs.readdirSync(f).join(',')}`;
  };
  return [secret, victim, rootDir, host].map(one).join('\n');
}
const before = fingerprint();

/** Every entry below `root`, without following links. */
function walk(root: string): Array<{ path: string; st: fs.Stats }> {
  const out: Array<{ path: string; st: fs.Stats }> = [];
  for (const e of fs.readdirSync(root)) {
    const p = path.join(root, e);
    const st = fs.lstatSync(p);
    out.push({ path: p, st });
    if (st.isDirectory()) out.push(...walk(p));
  }
  return out;
}

// A real repository with one small restore point of the `web` VM definition.
const image = path.join(dir, 'root.img');
fs.writeFileSync(image, crypto.randomBytes(4 * 1024 * 1024));
const repository = await initRepository(path.join(dir, 'repo'));
const vm = loadVmDefinition(projectPath('lab-templates', 'vms', 'web.json'));
const point = await backupVm({ repo: repository, vm, disks: { [vm.disks[0]!.name]: image }, source: image });
const publish = (resume: boolean): ReturnType<typeof startPublication> =>
  startPublication({ repo: repository.path, point: point.id, stateDir, overlayLimitBytes: LIMIT, resume }, { repository });

let pub = await publish(false);
// The worst case: an export without root squash (as ESXi needs), so a client's claim of uid 0 reaches the datastore.
const NO_SQUASH = { rootSquash: false };
let served = await startServer(pub.datastore, NO_SQUASH);
let client = await Nfs3TestClient.connect(served.ports.nfs);
t.teardown(async () => {
  client.close();
  await served.server.stop();
  await pub.close({ discard: true });
  fs.rmSync(dir, { recursive: true, force: true });
});

async function pubDir(): Promise<Buffer> {
  const root = await Nfs3TestClient.mountRoot(served.ports.mount, '/restorelab');
  const d = await client.lookup(root, pub.name);
  if (d.status !== NFS3.OK) throw new Error(`LOOKUP ${pub.name}: ${d.status}`);
  return d.fh!;
}
let top = await pubDir();

t.test('a symlink to a host file is only text: SETATTR, CREATE and WRITE through it touch nothing', async (t) => {
  const link = await client.symlink(top, 'evil', secret);
  t.equal(link.status, NFS3.OK, 'SYMLINK is allowed');
  t.equal((await client.readlink(link.fh!)).text, secret, 'READLINK returns the text');
  t.equal((await client.lookup(top, 'evil')).attr?.type, LNK, 'LOOKUP finds the link itself');

  await client.setattr(link.fh!, { mode: 0o666 }, ROOT_ONLY);
  await client.setattr(link.fh!, { uid: 1000, gid: 1000 }, ROOT_ONLY);
  t.not(await client.setattr(link.fh!, { size: 0 }, ROOT_ONLY), NFS3.OK, 'SETATTR size on a symlink is refused');
  t.not((await client.write(link.fh!, 0, Buffer.from('pwned'))).status, NFS3.OK, 'WRITE to a symlink is refused');
  t.equal(
    (await client.create(top, 'evil', 0o666, 0, ROOT_ONLY)).status,
    NFS3.EXIST,
    'CREATE UNCHECKED of the link name does not follow it',
  );
  t.equal((await client.create(top, 'evil', 0o666, 1, ROOT_ONLY)).status, NFS3.EXIST, 'CREATE GUARDED neither');

  const dirLink = await client.symlink(top, 'evildir', rootDir);
  t.equal(dirLink.status, NFS3.OK);
  t.equal((await client.create(dirLink.fh!, 'x', 0o644, 0, ROOT_ONLY)).status, NFS3.NOTDIR, 'a link to a host directory is no directory');
  t.equal((await client.mkdir(dirLink.fh!, 'x', 0o755, ROOT_ONLY)).status, NFS3.NOTDIR);
  t.equal((await client.lookup(dirLink.fh!, 'victim')).status, NFS3.NOTDIR, 'nor can names be looked up through it');
  t.equal(fingerprint(), before, 'the host files are unchanged: content, mode, owner, mtime');
});

t.test('a dangling symlink, then CREATE of its name, creates nothing on the host', async (t) => {
  const link = await client.symlink(top, 'dangle', planted);
  t.equal(link.status, NFS3.OK);
  t.equal((await client.create(top, 'dangle', 0o644, 0, ROOT_ONLY)).status, NFS3.EXIST);
  t.equal((await client.create(top, 'dangle', 0o644, 1, ROOT_ONLY)).status, NFS3.EXIST);
  t.equal((await client.readlink(link.fh!)).text, planted);
  t.notOk(fs.existsSync(planted), 'the named path was not created');
  t.equal(fingerprint(), before);
});

t.test('setuid from a client claiming uid 0 is dropped; the owner is only metadata', async (t) => {
  const f = await client.create(top, 'suid', 0o4755, 0, ROOT_ONLY);
  t.equal(f.status, NFS3.OK);
  t.equal(f.attr!.mode, 0o755, 'setuid dropped at CREATE');
  t.equal(f.attr!.uid, 0, 'the claimed uid is the recorded owner');
  t.equal((await client.write(f.fh!, 0, Buffer.concat([Buffer.from('\x7fELF'), crypto.randomBytes(64 * 1024)]))).status, NFS3.OK);
  t.equal(await client.setattr(f.fh!, { mode: 0o6755 }, ROOT_ONLY), NFS3.OK);
  t.equal((await client.getattr(f.fh!)).attr!.mode, 0o755, 'setuid and setgid dropped at SETATTR');
  t.equal(await client.setattr(f.fh!, { mode: 0o1755 }, ROOT_ONLY), NFS3.OK);
  t.equal((await client.getattr(f.fh!)).attr!.mode, 0o755, 'sticky dropped on a file');
  const d = await client.mkdir(top, 'sgid', 0o3775, ROOT_ONLY);
  t.equal(d.attr!.mode, 0o1775, 'setgid dropped on a directory, sticky kept');
  t.equal(await client.setattr(f.fh!, { uid: 0, gid: 0 }, { uid: 1000, gid: 1000 }), NFS3.OK, 'chown is metadata');
  t.equal((await client.getattr(f.fh!)).attr!.uid, 0);

  const me = process.getuid!();
  const entries = walk(stateDir);
  t.ok(entries.length > 0);
  for (const { path: p, st } of entries) {
    t.equal(st.mode & 0o6000, 0, `${p} is neither setuid nor setgid`);
    t.notOk(st.isSymbolicLink(), `${p} is no symlink`);
    t.equal(st.uid, me, `${p} is owned by the server's user`);
  }
  const data = entries.filter((e) => path.dirname(e.path) === path.join(stateDir, 'publications', pub.id, 'scratch-data'));
  t.ok(data.length > 0, 'scratch content is in scratch-data');
  for (const { path: p, st } of data) t.equal(st.mode & 0o7777, 0o600, `${p} is 0600`);
  t.equal(fingerprint(), before);
});

t.test('scratch draws on the overlay limit: writes past it and a 1 TiB size fail, and space comes back', async (t) => {
  const noSpace: number[] = [NFS3.NOSPC, NFS3.DQUOT, NFS3.FBIG];
  const start = await client.fsstat(top);
  t.equal(start.status, NFS3.OK);
  t.ok(start.abytes! < LIMIT, 'FSSTAT counts the scratch already written');
  const big = await client.create(top, 'web.vswp', 0o600);
  const chunk = crypto.randomBytes(512 * 1024);
  let accepted = 0;
  let status: number = NFS3.OK;
  for (let i = 0; i < 48 && status === NFS3.OK; i++) {
    const w = await client.write(big.fh!, i * chunk.length, chunk);
    status = w.status;
    if (status === NFS3.OK) accepted += w.count!;
  }
  t.ok(noSpace.includes(status), `a write past the limit fails with NOSPC/DQUOT/FBIG (got ${status})`);
  // Fill what is left page by page, so not even one 4 KiB block remains.
  for (let i = 0; i < 256; i++) {
    const w = await client.write(big.fh!, accepted, Buffer.alloc(4096, 7));
    if (w.status !== NFS3.OK) break;
    accepted += w.count!;
  }
  t.ok(accepted > 0 && accepted <= LIMIT, `accepted ${accepted} bytes, at most the limit`);
  const full = await client.fsstat(top);
  t.ok(full.abytes! < 4096, `FSSTAT shows the publication full (${full.abytes} bytes available)`);

  const raw = await client.lookup(top, `${vm.disks[0]!.name}.raw`);
  t.ok(noSpace.includes((await client.write(raw.fh!, 0, Buffer.alloc(4096, 1))).status), 'the disks share the budget scratch used up');

  const sparse = await client.create(top, 'sparse', 0o644);
  t.ok(noSpace.includes(await client.setattr(sparse.fh!, { size: TIB })), 'SETATTR size 1 TiB is refused');
  t.ok(noSpace.includes((await client.write(sparse.fh!, TIB, Buffer.from('x'))).status), 'a write at 1 TiB is refused');
  t.equal((await client.getattr(sparse.fh!)).attr!.size, 0);
  let hostBytes = 0;
  for (const { st } of walk(path.join(stateDir, 'publications', pub.id, 'scratch-data'))) {
    t.ok(st.size <= LIMIT, 'no host file is larger than the limit');
    hostBytes += st.blocks * 512;
  }
  t.ok(hostBytes <= LIMIT + 1024 * 1024, `scratch content on the host stays near the limit (${hostBytes} bytes)`);

  t.equal(await client.remove(top, 'web.vswp'), NFS3.OK);
  const freed = await client.fsstat(top);
  t.ok(freed.abytes! >= accepted, 'removing the file gives its space back');
  const w = await client.write(sparse.fh!, 0, Buffer.from('under the limit'));
  t.equal(w.status, NFS3.OK, 'a write under the limit works after');
  t.equal((await client.read(sparse.fh!, 0, 100)).data?.toString(), 'under the limit');
  t.equal(fingerprint(), before);
});

t.test('file handles of scratch entries resolve to the same names and contents after a restart', async (t) => {
  const logs = await client.mkdir(top, 'logs', 0o755);
  const log = await client.create(logs.fh!, 'vmware.log', 0o644);
  t.equal((await client.write(log.fh!, 0, Buffer.from('boot\n'))).status, NFS3.OK);
  const latest = await client.symlink(logs.fh!, 'latest', 'vmware.log');
  const before = {
    logs: (await client.getattr(logs.fh!)).attr!,
    log: (await client.getattr(log.fh!)).attr!,
    latest: (await client.getattr(latest.fh!)).attr!,
  };

  client.close();
  await served.server.stop();
  await pub.close();
  pub = await publish(true);
  served = await startServer(pub.datastore, NO_SQUASH);
  client = await Nfs3TestClient.connect(served.ports.nfs);

  t.equal((await client.getattr(logs.fh!)).attr?.fileid, before.logs.fileid, 'the old directory handle resolves');
  t.same((await client.read(log.fh!, 0, 100)).data, Buffer.from('boot\n'), 'the old file handle reads the same content');
  t.equal((await client.readlink(latest.fh!)).text, 'vmware.log', 'the old symlink handle reads the same text');
  t.same((await client.lookup(top, 'logs')).fh, logs.fh, 'LOOKUP by name gives the same handles');
  t.same((await client.lookup(logs.fh!, 'vmware.log')).fh, log.fh);
  t.same((await client.lookup(logs.fh!, 'latest')).fh, latest.fh);
  t.equal((await client.getattr(log.fh!)).attr?.mode, 0o644);
  t.equal((await client.lookup(top, 'suid')).attr?.mode, 0o755, 'recorded modes survive too');
  top = await pubDir();
  t.equal((await client.fsstat(top)).status, NFS3.OK);
});
