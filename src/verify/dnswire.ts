/** A minimal DNS wire codec: one A query out, A answers back (RFC 1035 §4). */
const RCODES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'];
/** The RFC 1035 §4.1.1 name of a response code, or its number. */
export const rcodeName = (rcode: number): string => RCODES[rcode] ?? `rcode ${rcode}`;

export function buildQuery(id: number, name: string): Buffer {
  const labels = name.replace(/\.$/, '').split('.');
  // A label is at most 63 bytes and a name at most 255 (§2.3.4): a longer one would encode as garbage.
  if (labels.some((l) => l.length === 0 || l.length > 63 || !/^[\x21-\x7e]+$/.test(l)) || name.length > 253) {
    throw new Error(`not a DNS name: ${JSON.stringify(name)}`);
  }
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100, 2);
  header.writeUInt16BE(1, 4);
  return Buffer.concat([
    header,
    ...labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'ascii')])),
    Buffer.from([0, 0, 1, 0, 1]),
  ]);
}

function skipName(b: Buffer, pos: number): number {
  for (let hops = 0; hops < 128; hops++) {
    const len = b[pos];
    if (len === undefined) throw new Error('truncated name');
    if ((len & 0xc0) === 0xc0) return pos + 2;
    if (len === 0) return pos + 1;
    pos += len + 1;
  }
  throw new Error('name with too many labels');
}

export interface DnsReply {
  rcode: number;
  a: string[];
  truncated: boolean;
}

/**
 * The A records of a reply to query `id`. Throws on anything that is not
 * such a reply (wrong id, a query rather than a response, truncated packet):
 * a test must not pass on a stray packet.
 */
export function parseAnswers(b: Buffer, id: number): DnsReply {
  if (b.length < 12 || b.readUInt16BE(0) !== id) throw new Error('reply does not match the query id');
  const flags = b.readUInt16BE(2);
  if ((flags & 0x8000) === 0) throw new Error('packet is a query, not a response');
  const rcode = flags & 0xf;
  const qd = b.readUInt16BE(4),
    an = b.readUInt16BE(6);
  let pos = 12;
  for (let i = 0; i < qd; i++) pos = skipName(b, pos) + 4;
  const a: string[] = [];
  for (let i = 0; i < an; i++) {
    pos = skipName(b, pos);
    if (pos + 10 > b.length) throw new Error('truncated answer record');
    const type = b.readUInt16BE(pos),
      rdlen = b.readUInt16BE(pos + 8);
    if (pos + 10 + rdlen > b.length) throw new Error('truncated answer data');
    if (type === 1 && rdlen === 4) a.push(Array.from(b.subarray(pos + 10, pos + 14)).join('.'));
    pos += 10 + rdlen;
  }
  return { rcode, a, truncated: (flags & 0x0200) !== 0 };
}
