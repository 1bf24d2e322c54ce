// The DNS codec against packets written out by hand (RFC 1035 §4), not by the
// code under test; the real server round trip is in test/verify/probe.test.ts.
import t from 'tap';
import { buildQuery, parseAnswers, rcodeName } from '../../src/verify/dnswire.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
// Question: web.lab.test IN A
const question = '03 776562 03 6c6162 04 74657374 00 0001 0001';

t.test('an A query for web.lab.test, byte for byte', async (t) => {
  t.same(buildQuery(0x1234, 'web.lab.test'), hex(`1234 0100 0001 0000 0000 0000 ${question}`));
  t.same(buildQuery(0x1234, 'web.lab.test.'), buildQuery(0x1234, 'web.lab.test'), 'a trailing dot is the same name');
  t.throws(() => buildQuery(1, 'a..b'), /not a DNS name/);
  t.throws(() => buildQuery(1, `${'x'.repeat(64)}.test`), /not a DNS name/);
  t.throws(() => buildQuery(1, 'white space.test'), /not a DNS name/);
});

t.test('answers: the A records, the rcode, and what is not a reply', async (t) => {
  // NOERROR, one answer with a compressed owner name (pointer to offset 12): A 192.168.77.10.
  const ok = hex(`1234 8580 0001 0001 0000 0000 ${question} c00c 0001 0001 00000000 0004 c0a84d0a`);
  t.same(parseAnswers(ok, 0x1234), { rcode: 0, a: ['192.168.77.10'], truncated: false });
  // NXDOMAIN, no answers.
  const nx = hex(`1234 8583 0001 0000 0000 0000 ${question}`);
  t.same(parseAnswers(nx, 0x1234), { rcode: 3, a: [], truncated: false });
  t.equal(rcodeName(3), 'NXDOMAIN');
  t.equal(rcodeName(5), 'REFUSED');
  t.equal(rcodeName(11), 'rcode 11');
  // A CNAME first (skipped), then the A record.
  const cname = hex(`1234 8180 0001 0002 0000 0000 ${question} c00c 0005 0001 00000000 0002 c00c c00c 0001 0001 00000000 0004 0a000001`);
  t.same(parseAnswers(cname, 0x1234).a, ['10.0.0.1']);
  // Truncated flag is reported.
  t.equal(parseAnswers(hex(`1234 8380 0001 0000 0000 0000 ${question}`), 0x1234).truncated, true);

  t.throws(() => parseAnswers(ok, 0x4321), /does not match the query id/, "another query's reply");
  t.throws(
    () => parseAnswers(hex(`1234 0100 0001 0000 0000 0000 ${question}`), 0x1234),
    /a query, not a response/,
    'our own query echoed back',
  );
  t.throws(() => parseAnswers(ok.subarray(0, ok.length - 2), 0x1234), /truncated answer data/, 'a cut-off record is no answer');
  t.throws(() => parseAnswers(hex(`1234 8180 0001 0001 0000 0000 ${question} c00c 0001`), 0x1234), /truncated answer record/);
});
