import t from 'tap';
import {
  encodeClientFlags,
  encodeGo,
  encodeOption,
  encodeRequest,
  encodeSetMetaContext,
  parseBlockStatus,
  parseErrorChunk,
  parseGreeting,
  parseHole,
  parseInfo,
  parseMetaContext,
  parseOptionReplyHeader,
} from '../../src/nbd/wire.js';
import { NbdProtocolError } from '../../src/nbd/errors.js';
import { IHAVEOPT, NBDMAGIC, REP_MAGIC, REQUEST_MAGIC, bytes } from './fixtures/vectors.js';

t.test('client messages match hand-built vectors', async (t) => {
  t.same(encodeClientFlags(3), bytes({ hex: '00000003' }));
  t.same(encodeOption(8), bytes(IHAVEOPT, { hex: '00000008' }, { hex: '00000000' }), 'NBD_OPT_STRUCTURED_REPLY');
  t.same(
    encodeGo('disk', [3]),
    bytes(IHAVEOPT, { hex: '00000007' }, { u32: 4 + 4 + 2 + 2 }, { u32: 4 }, { ascii: 'disk' }, { u16: 1 }, { u16: 3 }),
    'NBD_OPT_GO with NBD_INFO_BLOCK_SIZE',
  );
  t.same(encodeGo('', []), bytes(IHAVEOPT, { hex: '00000007' }, { u32: 6 }, { u32: 0 }, { u16: 0 }), 'default export, no info');
  t.same(
    encodeSetMetaContext('', ['base:allocation', 'qemu:dirty-bitmap:b0']),
    bytes(
      IHAVEOPT,
      { hex: '0000000a' },
      { u32: 4 + 4 + 4 + 15 + 4 + 20 },
      { u32: 0 },
      { u32: 2 },
      { u32: 15 },
      { ascii: 'base:allocation' },
      { u32: 20 },
      { ascii: 'qemu:dirty-bitmap:b0' },
    ),
    'NBD_OPT_SET_META_CONTEXT is option 10 with a query count',
  );
  t.same(
    encodeRequest(0, 0, 0x0102030405060708n, 2 ** 40 + 5, 65536),
    bytes(REQUEST_MAGIC, { hex: '0000' }, { hex: '0000' }, { hex: '0102030405060708' }, { hex: '0000010000000005' }, { hex: '00010000' }),
    'NBD_CMD_READ header, offsets beyond 32 bits',
  );
  t.same(
    encodeRequest(0, 7, 9n, 0, 4096),
    bytes(REQUEST_MAGIC, { u16: 0 }, { u16: 7 }, { u64: 9 }, { u64: 0 }, { u32: 4096 }),
    'NBD_CMD_BLOCK_STATUS',
  );
  t.throws(() => encodeGo('a\0b', []), /NUL/);
});

t.test('server handshake messages parse', async (t) => {
  t.equal(parseGreeting(bytes(NBDMAGIC, IHAVEOPT, { hex: '0003' })), 3);
  t.throws(() => parseGreeting(bytes({ ascii: 'HTTP/1.1' }, IHAVEOPT, { hex: '0003' })), NbdProtocolError);
  t.throws(() => parseGreeting(bytes(NBDMAGIC, { hex: '0000420281861253' }, { hex: '0003' })), /old-style/);
  t.same(parseOptionReplyHeader(bytes(REP_MAGIC, { u32: 7 }, { hex: '80000001' }, { u32: 12 })), {
    option: 7,
    type: 2 ** 31 + 1,
    length: 12,
  });
  t.throws(() => parseOptionReplyHeader(bytes({ hex: '0003e889045565aa' }, { u32: 7 }, { u32: 1 }, { u32: 0 })), /magic/);
  t.same(parseInfo(bytes({ u16: 0 }, { u64: 2n ** 40n }, { u16: 0x8b })), { type: 'export', size: 2 ** 40, transmissionFlags: 0x8b });
  t.same(parseInfo(bytes({ u16: 3 }, { u32: 1 }, { u32: 4096 }, { u32: 32 << 20 })), {
    type: 'block-size',
    minimum: 1,
    preferred: 4096,
    maximum: 32 << 20,
  });
  t.same(parseInfo(bytes({ u16: 1 }, { ascii: 'x' })), { type: 'other', info: 1 });
  t.throws(() => parseInfo(bytes({ u16: 0 }, { u64: 1 })), /expected 12/);
  t.same(parseMetaContext(bytes({ u32: 2 }, { ascii: 'qemu:dirty-bitmap:b0' })), { id: 2, name: 'qemu:dirty-bitmap:b0' });
});

t.test('transmission payloads parse', async (t) => {
  t.same(parseBlockStatus(bytes({ u32: 5 }, { u32: 65536 }, { u32: 0 }, { u32: 4096 }, { u32: 3 })), {
    contextId: 5,
    descriptors: [
      { length: 65536, flags: 0 },
      { length: 4096, flags: 3 },
    ],
  });
  t.throws(() => parseBlockStatus(bytes({ u32: 5 })), /positive multiple/);
  t.throws(() => parseBlockStatus(bytes({ u32: 5 }, { u32: 0 }, { u32: 0 })), /length zero/);
  t.same(parseHole(bytes({ u64: 1 << 20 }, { u32: 512 })), { offset: 1 << 20, length: 512 });
  t.throws(() => parseHole(bytes({ u64: 0 }, { u32: 0 })), /size zero/);
  t.same(parseErrorChunk(0x8001, bytes({ u32: 5 }, { u16: 4 }, { ascii: 'oops' })), { errno: 5, message: 'oops' });
  t.same(parseErrorChunk(0x8002, bytes({ u32: 22 }, { u16: 0 }, { u64: 4096 })), { errno: 22, message: '', offset: 4096 });
  t.throws(() => parseErrorChunk(0x8001, bytes({ u32: 5 }, { u16: 9 }, { ascii: 'oops' })), /runs past/);
});
