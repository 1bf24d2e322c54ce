/** The framer both protocol clients share, at every split point (unit test beside qmp-qga.test.ts). */
import t from 'tap';
import { JsonLineFramer } from '../../src/hypervisor/jsonlines.js';

t.test('messages survive every split point; garbage and 0xFF sentinels are dropped', async (t) => {
  const stream = Buffer.concat([
    Buffer.from('{"QMP": {"version": {}}}\r\n{"retu'),
    Buffer.from('rn": 1}\r\nnot json\n'),
    Buffer.from([0xff]),
    Buffer.from('{"return": 2}\n{"event": "X"}\n'),
  ]);
  const expected = [{ QMP: { version: {} } }, { return: 1 }, { return: 2 }, { event: 'X' }];
  for (let cut = 0; cut <= stream.length; cut++) {
    const got: unknown[] = [];
    const f = new JsonLineFramer((m) => got.push(m));
    f.push(stream.subarray(0, cut));
    f.push(stream.subarray(cut));
    t.same(got, expected, `split at ${cut}`);
  }
  const got: unknown[] = [];
  const f = new JsonLineFramer((m) => got.push(m));
  f.push(Buffer.concat([Buffer.from('{"half": '), Buffer.from([0xff]), Buffer.from('{"return": 3}\n')]));
  t.same(got, [{ return: 3 }], 'a sentinel discards the half message before it');
});
