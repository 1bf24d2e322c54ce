import t from 'tap';
import { negotiate, type HandshakeIo } from '../../src/nbd/handshake.js';
import { NbdOptionError, NbdProtocolError } from '../../src/nbd/errors.js';
import { IHAVEOPT, NBDMAGIC, bytes, optionReply } from './fixtures/vectors.js';

/** Replays recorded server bytes and records what the client wrote. */
function scripted(server: Buffer): HandshakeIo & { written(): Buffer } {
  let at = 0;
  const out: Buffer[] = [];
  return {
    async read(n) {
      if (at + n > server.length) throw new Error(`client read ${n} bytes past the end of the script (at ${at})`);
      const b = server.subarray(at, at + n);
      at += n;
      return b;
    },
    write(b) {
      out.push(Buffer.from(b));
    },
    written: () => Buffer.concat(out),
  };
}

const greeting = bytes(NBDMAGIC, IHAVEOPT, { hex: '0003' });
const exportInfo = bytes({ u16: 0 }, { u64: 16 << 20 }, { u16: 0x018b });
const blockSizeInfo = bytes({ u16: 3 }, { u32: 1 }, { u32: 4096 }, { u32: 32 << 20 });

t.test('full negotiation: bytes sent and export learned', async (t) => {
  const io = scripted(
    Buffer.concat([
      greeting,
      optionReply(8, 1),
      optionReply(10, 4, bytes({ u32: 0 }, { ascii: 'base:allocation' })),
      optionReply(10, 4, bytes({ u32: 2 }, { ascii: 'qemu:dirty-bitmap:b0' })),
      optionReply(10, 1),
      optionReply(7, 3, exportInfo),
      optionReply(7, 3, blockSizeInfo),
      optionReply(7, 1),
    ]),
  );
  const got = await negotiate(io, { exportName: '', metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b0'] });
  t.same(got, {
    size: 16 << 20,
    transmissionFlags: 0x018b,
    structuredReplies: true,
    blockSize: { minimum: 1, preferred: 4096, maximum: 32 << 20 },
    contexts: new Map([
      ['base:allocation', 0],
      ['qemu:dirty-bitmap:b0', 2],
    ]),
  });
  t.same(
    io.written(),
    bytes(
      { hex: '00000003' }, // client flags: FIXED_NEWSTYLE | NO_ZEROES (server offered both)
      IHAVEOPT,
      { u32: 8 },
      { u32: 0 },
      IHAVEOPT,
      { u32: 10 },
      { u32: 51 },
      { u32: 0 },
      { u32: 2 },
      { u32: 15 },
      { ascii: 'base:allocation' },
      { u32: 20 },
      { ascii: 'qemu:dirty-bitmap:b0' },
      IHAVEOPT,
      { u32: 7 },
      { u32: 8 },
      { u32: 0 },
      { u16: 1 },
      { u16: 3 },
    ),
  );
});

t.test('server without NO_ZEROES gets client flags without it', async (t) => {
  const io = scripted(
    Buffer.concat([bytes(NBDMAGIC, IHAVEOPT, { hex: '0001' }), optionReply(8, 1), optionReply(7, 3, exportInfo), optionReply(7, 1)]),
  );
  const got = await negotiate(io, { exportName: 'x', metaContexts: [] });
  t.equal(got.blockSize, undefined);
  t.same(io.written().subarray(0, 4), bytes({ hex: '00000001' }));
});

t.test('refusals become clear errors', async (t) => {
  const unknownExport = scripted(
    Buffer.concat([greeting, optionReply(8, 1), optionReply(7, 2 ** 31 + 6, Buffer.from('export "nope" not present'))]),
  );
  const err = await negotiate(unknownExport, { exportName: 'nope', metaContexts: [] }).catch((e: unknown) => e);
  t.ok(err instanceof NbdOptionError);
  t.match((err as Error).message, /NBD_OPT_GO for export "nope".*NBD_REP_ERR_UNKNOWN: export "nope" not present/);

  const noBitmap = scripted(Buffer.concat([greeting, optionReply(8, 1), optionReply(10, 1)]));
  await t.rejects(negotiate(noBitmap, { exportName: '', metaContexts: ['qemu:dirty-bitmap:b9'] }), /qemu:dirty-bitmap:b9.*not offered/);

  const noStructured = scripted(Buffer.concat([greeting, optionReply(8, 2 ** 31 + 1)]));
  await t.rejects(negotiate(noStructured, { exportName: '', metaContexts: ['base:allocation'] }), /needs structured replies/);

  const oldServer = scripted(bytes(NBDMAGIC, IHAVEOPT, { hex: '0000' }));
  await t.rejects(negotiate(oldServer, { exportName: '', metaContexts: [] }), NbdProtocolError);

  const wrongOption = scripted(Buffer.concat([greeting, optionReply(7, 1)]));
  await t.rejects(negotiate(wrongOption, { exportName: '', metaContexts: [] }), /reply is for option 7/);

  const noExportInfo = scripted(Buffer.concat([greeting, optionReply(8, 1), optionReply(7, 1)]));
  await t.rejects(negotiate(noExportInfo, { exportName: '', metaContexts: [] }), /without sending NBD_INFO_EXPORT/);
});
