// Our NBD client against a real qemu-nbd, over a unix socket and TCP.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { NbdClient } from '../../src/nbd/client.js';
import { NBD_STATE_DIRTY, NBD_STATE_ZERO } from '../../src/nbd/constants.js';
import { NbdConnectionError, NbdOptionError, NbdServerError } from '../../src/nbd/errors.js';
import { run, startQemuNbd, tempDir } from './fixtures/helpers.js';

const MiB = 1 << 20;
const dir = tempDir(t);
const image = join(dir, 'disk.qcow2');
const reference = join(dir, 'disk.raw');

// 16 MiB: data at 0-3 MiB (backing), 2-4 MiB (top), hole 4-8 MiB, data 8-9 MiB
// and a byte pattern at an odd offset; bitmap b0 sees only the writes after it.
run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M']);
run('qemu-io', ['-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x22 2M 2M', image]);
run('qemu-img', ['bitmap', '--add', image, 'b0']);
run('qemu-io', ['-c', 'write -P 0x33 8M 1M', '-c', 'write -P 0x44 13631488 65536', image]);
run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, reference]);
const expected = readFileSync(reference);

async function serve(extra: string[] = []): Promise<string> {
  const sock = join(dir, `nbd-${Math.random().toString(36).slice(2)}.sock`);
  await startQemuNbd(t, ['--read-only', '--persistent', '--shared=8', '--format=qcow2', `--socket=${sock}`, ...extra, image], sock);
  return sock;
}

t.test('unix socket: whole disk, odd ranges, split and pipelined reads', async (t) => {
  const sock = await serve();
  const c = await NbdClient.connect({ socketPath: sock });
  t.teardown(() => c.close());
  t.equal(c.size, 16 * MiB);
  t.ok(c.structuredReplies);
  t.ok(c.contexts.has('base:allocation'));
  t.ok((await c.read(0, c.size)).equals(expected), 'whole disk equals qemu-img convert');
  t.ok((await c.read(3 * MiB - 7, 13)).equals(expected.subarray(3 * MiB - 7, 3 * MiB + 6)), 'unaligned read across a layer boundary');

  const small = await NbdClient.connect({ socketPath: sock, maxRequestBytes: MiB, maxInFlight: 3 });
  t.teardown(() => small.close());
  t.ok(
    (await small.read(MiB / 2, 10 * MiB)).equals(expected.subarray(MiB / 2, 10.5 * MiB)),
    'a 10 MiB read split into 1 MiB requests, 3 in flight',
  );
  const offsets = Array.from({ length: 40 }, (_, i) => (i * 409_573) % (15 * MiB));
  const reads = await Promise.all(offsets.map((o) => small.read(o, 65536 + (o % 4096))));
  t.ok(
    reads.every((b, i) => b.equals(expected.subarray(offsets[i], (offsets[i] as number) + b.length))),
    '40 concurrent reads all match',
  );
});

t.test('base:allocation marks the holes, and only zeros are marked zero', async (t) => {
  const sock = await serve();
  const c = await NbdClient.connect({ socketPath: sock });
  t.teardown(() => c.close());
  const zeroRanges: [number, number][] = [];
  let at = 0;
  for await (const e of c.extents()) {
    t.equal(e.offset, at);
    at += e.length;
    if (e.flags & NBD_STATE_ZERO) {
      zeroRanges.push([e.offset, e.offset + e.length]);
      t.ok(
        expected.subarray(e.offset, e.offset + e.length).every((b) => b === 0),
        `zero extent ${e.offset}+${e.length} is zeros`,
      );
    }
  }
  t.equal(at, 16 * MiB);
  t.ok(
    zeroRanges.some(([s, e]) => s <= 4 * MiB && e >= 8 * MiB),
    'the 4-8 MiB hole is reported',
  );
});

t.test('qemu:dirty-bitmap context reports exactly the blocks written after the bitmap', async (t) => {
  const sock = await serve(['--bitmap=b0']);
  const c = await NbdClient.connect({ socketPath: sock, metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b0'] });
  t.teardown(() => c.close());
  const dirty: [number, number][] = [];
  for await (const e of c.extents('qemu:dirty-bitmap:b0')) if (e.flags & NBD_STATE_DIRTY) dirty.push([e.offset, e.length]);
  t.same(dirty, [
    [8 * MiB, MiB],
    [13631488, 65536],
  ]);
  const both = await c.blockStatusAll(0, c.size);
  t.same([...both.keys()].sort(), ['base:allocation', 'qemu:dirty-bitmap:b0'], 'one request answers every context');
});

t.test('TCP on loopback', async (t) => {
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  await startQemuNbd(t, ['--read-only', '--persistent', '--format=qcow2', '--bind=127.0.0.1', `--port=${port}`, image]);
  const c = await NbdClient.connect({ host: '127.0.0.1', port });
  t.teardown(() => c.close());
  t.ok((await c.read(2 * MiB, 4 * MiB)).equals(expected.subarray(2 * MiB, 6 * MiB)));
});

t.test('refusals and server errors are clear', async (t) => {
  const sock = await serve();
  await t.rejects(NbdClient.connect({ socketPath: sock, exportName: 'nope' }), NbdOptionError);
  const err = await NbdClient.connect({ socketPath: sock, metaContexts: ['qemu:dirty-bitmap:b0'] }).catch((e: unknown) => e);
  t.ok(err instanceof NbdOptionError, 'a bitmap that is not exported');
  t.match((err as NbdOptionError).hint ?? '', /--bitmap/);

  // blkdebug makes qemu fail reads of sector 2048 with EIO.
  const raw = join(dir, 'eio.raw');
  writeFileSync(raw, Buffer.alloc(4 * MiB, 0x5a));
  const cfg = join(dir, 'blkdebug.cfg');
  writeFileSync(cfg, '[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "2048"\n');
  const esock = join(dir, 'eio.sock');
  await startQemuNbd(
    t,
    [
      '--read-only',
      '--persistent',
      '--shared=4',
      `--socket=${esock}`,
      '--image-opts',
      `driver=raw,file.driver=blkdebug,file.config=${cfg},file.image.driver=file,file.image.filename=${raw}`,
    ],
    esock,
  );
  const simple = await NbdClient.connect({ socketPath: esock, structuredReplies: false });
  t.teardown(() => simple.close());
  t.equal(simple.structuredReplies, false);
  const e1 = await simple.read(MiB, 4096).catch((e: unknown) => e);
  t.ok(e1 instanceof NbdServerError, 'simple reply with EIO');
  t.equal((e1 as NbdServerError).errnoName, 'EIO');
  t.ok((await simple.read(0, 4096)).equals(Buffer.alloc(4096, 0x5a)), 'still usable afterwards');
  // qemu 7.2 drops a structured-reply client on a read error instead of sending an error chunk.
  const structured = await NbdClient.connect({ socketPath: esock });
  t.teardown(() => structured.close());
  const e2 = await structured.read(MiB, 4096).catch((e: unknown) => e);
  t.ok(e2 instanceof NbdServerError || e2 instanceof NbdConnectionError, 'structured read error surfaces');
  t.match((e2 as Error).message, /read of 4096 bytes at offset 1048576/);
});

t.test('close sends NBD_CMD_DISC: a one-shot qemu-nbd exits cleanly', async (t) => {
  const sock = join(dir, 'oneshot.sock');
  const child = await startQemuNbd(t, ['--read-only', '--format=qcow2', `--socket=${sock}`, image], sock);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const c = await NbdClient.connect({ socketPath: sock });
  await c.read(0, 4096);
  await c.close();
  await c.close();
  t.equal(await exited, 0);
  await t.rejects(c.read(0, 512), /closed/);
});
