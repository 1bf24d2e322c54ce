/**
 * The shared publisher (src/publish/shared-publisher.ts), for real: the
 * `restorelab publisher-serve` process started on demand over a real
 * repository, real NBD clients (our NbdClient, qemu-io, nbdinfo).
 *
 * Checked: two sessions' publications of one point are served by one
 * process, each on its own 0600 socket that exports only its own disk; the
 * second session's cold reads are all cache hits; a write through one never
 * reaches the other or the repository; closing one leaves the other
 * serving; a connection that ends without closing (a supervisor that died)
 * takes only its publication; `stop` from another process closes one
 * publication and not the publisher; a killed publisher is seen by every
 * session (`lost`); many starting at once make one publisher; the last one
 * gone, it exits after its idle time.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { exec, which } from '../../src/host/exec.js';
import { processAlive } from '../../src/host/process.js';
import { NbdClient } from '../../src/nbd/client.js';
import { parseNbdUrl } from '../../src/nbd/url.js';
import type { PublicationOwner, PublishOptions, RunningPublication } from '../../src/publish/contract.js';
import { listPublications, removePublication } from '../../src/publish/publish.js';
import { connectPublisher, startSharedPublication } from '../../src/publish/shared-client.js';
import { PublisherConnection, publisherSocket, type PublisherStats } from '../../src/publish/publisher-wire.js';
import { chunkFingerprint, webRepository } from './fixtures/web.js';

for (const tool of ['qemu-io', 'nbdinfo']) {
  if (!which(tool)) throw new Error(`${tool} is missing (apt-get install qemu-utils libnbd-bin)`);
}

/** Short, so the idle exit is seen within the test; the default is 30 s. */
const IDLE_MS = 2000;
process.env.RESTORELAB_PUBLISHER_IDLE_MS = String(IDLE_MS);

const dir = mkdtempSync('/tmp/rlshpub-');
const { repo, point, image } = await webRepository(dir);
const before = chunkFingerprint(repo);
/** Read by both sessions: the start of the disk (boot sector, partition table, the first file system blocks). */
const SPAN = 16 * 1024 * 1024;

t.teardown(async () => {
  for (const s of ['a', 'b', 'c', 'd'].map((x) => join(dir, x))) {
    for (const p of listPublications(s)) await removePublication(s, p.id, { discard: true, as: p.owner }).catch(() => undefined);
  }
  rmSync(dir, { recursive: true, force: true });
});

const owner = (id: string): PublicationOwner => ({ kind: 'session', id });
const options = (stateDir: string, id: string): PublishOptions => ({ repo, point: point.id, stateDir, owner: owner(id), nbd: {} });
const socketOf = (p: RunningPublication): string => {
  const s = parseNbdUrl(p.nbd?.root ?? '').server;
  return s.type === 'unix' ? s.path : '';
};
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function readSpan(p: RunningPublication, length = SPAN): Promise<Buffer> {
  const c = await NbdClient.connect({ socketPath: socketOf(p), exportName: 'root' });
  try {
    return await c.read(0, length);
  } finally {
    await c.close();
  }
}

async function stats(stateDir: string): Promise<PublisherStats> {
  const c = await connectPublisher(stateDir);
  try {
    const r = await c.request({ op: 'stats' }, 10_000);
    if (!r.stats) throw new Error('no stats');
    return r.stats;
  } finally {
    c.close();
  }
}

const pidOf = (stateDir: string, id: string): number | undefined => listPublications(stateDir).find((p) => p.id === id)?.pid;

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const imageStart = (): Buffer => readFileSync(image).subarray(0, SPAN);

t.test('two sessions, one publisher: own sockets and exports, shared decoding, separate overlays', async (t) => {
  const state = join(dir, 'a');
  const a = await startSharedPublication(options(state, 's1'));
  const b = await startSharedPublication(options(state, 's2'));
  t.not(a.id, b.id, 'one publication per session, ids of their own');
  const pid = pidOf(state, a.id);
  t.ok(pid !== undefined && pid !== process.pid && processAlive(pid), 'served by another process');
  t.equal(pidOf(state, b.id), pid, 'both by the same one');
  t.not(socketOf(a), socketOf(b), 'each on a socket of its own');
  for (const p of [a, b]) {
    const st = statSync(socketOf(p));
    t.same([st.isSocket(), st.mode & 0o777], [true, 0o600], `${p.id}: 0600`);
    const list = await exec('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${socketOf(p)}`], { timeoutMs: 30_000 });
    const exports = (JSON.parse(list.stdout) as { exports: Array<{ 'export-name': string; description?: string }> }).exports;
    t.same(
      exports.map((e) => [e['export-name'], e.description]),
      [['root', `${p.id}/root.raw`]],
      `${p.id}: its own disk, nothing else`,
    );
  }

  const s0 = (await stats(state)).repositories[0]!;
  t.equal((await stats(state)).repositories.length, 1, 'one reading for the one repository');
  t.equal(sha(await readSpan(a)), sha(imageStart()), 'the first session reads the image');
  const s1 = (await stats(state)).repositories[0]!;
  t.ok(s1.cacheMisses > s0.cacheMisses, `its cold reads decode (${s1.cacheMisses - s0.cacheMisses} chunks)`);
  t.equal(sha(await readSpan(b)), sha(imageStart()), 'the second reads the same bytes');
  const s2 = (await stats(state)).repositories[0]!;
  t.equal(s2.cacheMisses, s1.cacheMisses, "the second's cold reads decode nothing: the first one's chunks are cached");
  t.ok(s2.cacheHits > s1.cacheHits, `they are hits (${s2.cacheHits - s1.cacheHits})`);

  const w = await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 64k', '-c', 'flush', a.nbd!.root!], { timeoutMs: 60_000 });
  t.equal(w.code, 0, `a write through the first session ${w.stderr}`);
  t.ok(
    (await readSpan(a, 65536)).every((x) => x === 0x5a),
    'it reads its write back',
  );
  t.same(await readSpan(b, 65536), imageStart().subarray(0, 65536), 'the other session does not see it');
  t.equal(chunkFingerprint(repo), before, 'the repository is unchanged');

  await a.close({ discard: true });
  t.notOk(existsSync(socketOf(a)), "the closed session's socket is gone");
  t.notOk(existsSync(join(state, 'overlays', a.id)), 'and its overlay');
  t.same(
    listPublications(state).map((p) => p.id),
    [b.id],
    'and its record',
  );
  t.equal(sha(await readSpan(b)), sha(imageStart()), 'the other still serves');
  t.ok(pid !== undefined && processAlive(pid), 'from the same process');

  await b.close({ discard: true });
  await until('the publisher exits once idle', () => pid === undefined || !processAlive(pid), IDLE_MS + 15_000);
  t.notOk(existsSync(publisherSocket(state)), 'its control socket is gone');
});

t.test('a lease that ends takes only its publications; stop from another process closes one, not the publisher', async (t) => {
  const state = join(dir, 'b');
  const kept = await startSharedPublication(options(state, 'keep'));
  // A supervisor that dies: its connection ends without a close.
  const dying = await PublisherConnection.open(publisherSocket(state));
  const r = await dying.request({ op: 'publish', opts: options(state, 'dies') }, 120_000);
  const gone = r.publication!;
  const socket = gone.nbdSocket!;
  t.ok(existsSync(socket), 'served while its lease holds');
  dying.close();
  // Its record is rewritten without the pid last, once everything else is closed.
  await until(
    'the orphan is closed',
    () => !existsSync(socket) && listPublications(state).find((p) => p.id === gone.id)?.running === false,
  );
  const rec = listPublications(state).find((p) => p.id === gone.id);
  t.same([rec?.running, existsSync(join(state, 'overlays', gone.id))], [false, true], 'closed, its overlay kept for stop to discard');
  await removePublication(state, gone.id, { discard: true, as: owner('dies') });
  t.notOk(existsSync(join(state, 'overlays', gone.id)), 'stop discards it');

  // `stop` after a supervisor crash, while the publisher still serves the session: another owner is refused, the owner closes it.
  const pid = pidOf(state, kept.id)!;
  const refused = await removePublication(state, kept.id, { discard: true, as: owner('someone-else') }).catch((e: unknown) => e);
  t.match(refused, { code: 'PUBLICATION_NOT_OWNER' }, "another session's stop is refused");
  await removePublication(state, kept.id, { discard: true, as: owner('keep') });
  t.notOk(existsSync(socketOf(kept)), 'the owner closes it');
  t.ok(processAlive(pid), 'the publisher was asked, not signalled');
  await kept.close({ discard: true });
  await until('the publisher exits once idle', () => !processAlive(pid), IDLE_MS + 15_000);
});

t.test('a killed publisher is seen by every session it served', async (t) => {
  const state = join(dir, 'c');
  const a = await startSharedPublication(options(state, 'k1'));
  const b = await startSharedPublication(options(state, 'k2'));
  const pid = pidOf(state, a.id)!;
  process.kill(pid, 'SIGKILL');
  const why = await Promise.all([a.lost, b.lost]);
  t.match(why[0], new RegExp(`publication ${a.id}: the shared publisher closed the connection`), 'the first session hears it');
  t.match(why[1], new RegExp(`publication ${b.id}`), 'and the second');
  await a.close({ discard: true });
  await b.close({ discard: true });
  t.same(listPublications(state), [], 'closing after it is gone removes the records');
  t.notOk(existsSync(socketOf(a)) || existsSync(socketOf(b)), 'and the sockets');
  t.notOk(existsSync(join(state, 'overlays', a.id)), 'and the overlays');
});

t.test('many starting at once make one publisher', async (t) => {
  const state = join(dir, 'd');
  const pubs = await Promise.all(['m1', 'm2', 'm3', 'm4'].map((id) => startSharedPublication(options(state, id))));
  const pids = new Set(pubs.map((p) => pidOf(state, p.id)));
  t.equal(pids.size, 1, `one serving process: ${[...pids].join(', ')}`);
  // The others started meanwhile find the lock taken and exit (after loading the CLI: a second or so).
  const running = async (): Promise<string[]> =>
    (await exec('pgrep', ['-f', `publisher-serve --state-dir ${state}$`])).stdout.trim().split('\n').filter(Boolean);
  let left = await running();
  for (let end = Date.now() + 20_000; left.length > 1 && Date.now() < end; left = await running()) {
    await new Promise((r) => setTimeout(r, 200));
  }
  t.same(left, [String([...pids][0])], 'and no other left running');
  for (const p of pubs) await p.close({ discard: true });
});
