/**
 * Masquerade subnets carved from a host's pool. A lab's masquerade subnet is
 * how the host reaches its guests, so two copies of one lab on one host (two
 * lab workers on a shared machine, each mirroring the same production
 * network) cannot both use the lab's own: the second copy's host route would
 * collide. A worker given a pool mirrors every lab onto free subnets of it;
 * results carry the address each VM was reached on, so nothing else changes.
 */
import { RestorelabError } from '../errors.js';
import { formatCidr, formatIp, overlaps, parseCidr, type Cidr } from './ipv4.js';

/**
 * `def` with each network's masquerade subnet moved to the first free one of
 * `pool` of the same size, and each static mapping's host address to a free
 * address of it (after the subnets): none overlaps `taken` or another.
 */
export function carveMasquerade<
  L extends { name: string; networks: { name: string; masquerade: string; staticMappings?: { production: string; host: string }[] }[] },
>(def: L, pool: Cidr, taken: readonly Cidr[]): L {
  const used = [...taken];
  const carve = (prefix: number, what: string): Cidr => {
    if (prefix < pool.prefix) {
      throw new RestorelabError(
        'LAB_MASQUERADE_POOL_FULL',
        `the masquerade pool ${formatCidr(pool)} is smaller than ${what} of lab ${def.name}`,
        {
          hint: `give the worker a pool of at least /${prefix} (--masquerade)`,
        },
      );
    }
    const size = 2 ** (32 - prefix);
    const blocks = 2 ** (prefix - pool.prefix);
    for (let i = 0; i < blocks; i++) {
      const c: Cidr = { base: (pool.base + i * size) >>> 0, prefix };
      if (used.some((u) => overlaps(u, c))) continue;
      used.push(c);
      return c;
    }
    throw new RestorelabError(
      'LAB_MASQUERADE_POOL_FULL',
      `no free /${prefix} left in the masquerade pool ${formatCidr(pool)} for ${what} of lab ${def.name}`,
      {
        hint: 'take labs down (restorelab lab list), or give the worker a larger pool',
      },
    );
  };
  const networks = def.networks.map((n) => {
    const own = parseCidr(n.masquerade, `${def.name} network ${n.name} masquerade`);
    return { ...n, masquerade: formatCidr(carve(own.prefix, `network ${n.name} (${n.masquerade})`)) };
  });
  for (const n of networks) {
    if (n.staticMappings)
      n.staticMappings = n.staticMappings.map((m) => ({ ...m, host: formatIp(carve(32, `the static mapping of ${m.production}`).base) }));
  }
  return { ...def, networks };
}
