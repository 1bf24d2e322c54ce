/**
 * Client address allow-lists (NFS exports, NBD over TCP): CIDRs or single
 * addresses, IPv4 or IPv6; an IPv4-mapped IPv6 peer matches its IPv4 form.
 */
import net from 'node:net';

/** A matcher for `allow`; throws RangeError on an entry that is not an address or CIDR. */
export function allowListMatcher(allow: readonly string[]): (addr: string) => boolean {
  const bl = new net.BlockList();
  for (const a of allow) {
    const [ip, bits] = a.split('/');
    const family = net.isIPv6(ip ?? '') ? 'ipv6' : 'ipv4';
    if (!ip || !net.isIP(ip)) throw new RangeError(`not an address or CIDR: ${a}`);
    if (bits === undefined) bl.addAddress(ip, family);
    else bl.addSubnet(ip, Number(bits), family);
  }
  // Checked on every call; clients are few, so remember the answers (bounded).
  const seen = new Map<string, boolean>();
  return (addr) => {
    let ok = seen.get(addr);
    if (ok === undefined) {
      const a = addr.replace(/^::ffff:/, '');
      ok = net.isIP(a) !== 0 && bl.check(a, net.isIPv6(a) ? 'ipv6' : 'ipv4');
      if (seen.size > 1024) seen.clear();
      seen.set(addr, ok);
    }
    return ok;
  };
}
