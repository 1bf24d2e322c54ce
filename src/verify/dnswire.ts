/** A minimal DNS wire codec: one A query out, A answers back (RFC 1035 §4). */
export function buildQuery(id: number, name: string): Buffer {
  const labels = name.replace(/\.$/, '').split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'ascii')]));
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0); header.writeUInt16BE(0x0100, 2); header.writeUInt16BE(1, 4);
  return Buffer.concat([header, ...labels, Buffer.from([0, 0, 1, 0, 1])]);
}

function skipName(b: Buffer, pos: number): number {
  for (;;) {
    const len = b[pos];
    if (len === undefined) throw new Error('truncated name');
    if ((len & 0xc0) === 0xc0) return pos + 2;
    if (len === 0) return pos + 1;
    pos += len + 1;
  }
}

export function parseAnswers(b: Buffer, id: number): { rcode: number; a: string[] } {
  if (b.length < 12 || b.readUInt16BE(0) !== id) throw new Error('reply does not match the query id');
  const rcode = b.readUInt16BE(2) & 0xf;
  const qd = b.readUInt16BE(4), an = b.readUInt16BE(6);
  let pos = 12;
  for (let i = 0; i < qd; i++) pos = skipName(b, pos) + 4;
  const a: string[] = [];
  for (let i = 0; i < an; i++) {
    pos = skipName(b, pos);
    const type = b.readUInt16BE(pos), rdlen = b.readUInt16BE(pos + 8);
    if (type === 1 && rdlen === 4) a.push(Array.from(b.subarray(pos + 10, pos + 14)).join('.'));
    pos += 10 + rdlen;
  }
  return { rcode, a };
}
