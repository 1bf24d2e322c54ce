/**
 * Both QMP and the guest agent speak JSON objects over a byte stream with no
 * length framing. QEMU ends each message with "\r\n", but the agent may also
 * emit a bare 0xFF sentinel (after guest-sync-delimited) and, after a restart
 * of the agent, partial garbage. So we frame by newline and drop lines that
 * do not parse, after removing any 0xFF bytes.
 */
export class JsonLineFramer {
  private buf = Buffer.alloc(0);

  constructor(private readonly onMessage: (msg: Record<string, unknown>) => void) {}

  push(chunk: Buffer): void {
    this.buf = Buffer.concat([this.buf, chunk]);
    for (;;) {
      const nl = this.buf.indexOf(0x0a);
      if (nl < 0) break;
      const line = this.buf.subarray(0, nl);
      this.buf = this.buf.subarray(nl + 1);
      this.parse(line);
    }
    // A sentinel resets the stream: anything before it is stale.
    const ff = this.buf.lastIndexOf(0xff);
    if (ff >= 0) this.buf = this.buf.subarray(ff + 1);
  }

  private parse(line: Buffer): void {
    const ff = line.lastIndexOf(0xff);
    const text = (ff >= 0 ? line.subarray(ff + 1) : line).toString('utf8').trim();
    if (!text) return;
    try {
      const msg = JSON.parse(text) as unknown;
      if (msg && typeof msg === 'object' && !Array.isArray(msg)) this.onMessage(msg as Record<string, unknown>);
    } catch {
      // garbage left in the channel by an earlier client; sync discards it
    }
  }
}
