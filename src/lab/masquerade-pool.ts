/**
 * Masquerade subnets carved from a host's pool. A lab's masquerade subnet is
 * how the host reaches its guests, so two copies of one lab on one host (two
 * lab workers on a shared machine, each mirroring the same production
 * network) cannot both use the lab's own: the second copy's host route would
 * collide. A worker given a pool mirrors every lab onto free subnets of it;
 * results carry the address each VM was reached on, so nothing else changes.
 */
import { RestorelabError } from '../errors.js';
import { formatCidr, overlaps, parseCidr, type Cidr } from './ipv4.js';

/** `def` with each network's masquerade subnet moved to the first free one of `pool` of the same size. */
export function carveMasquerade<L extends { name: string; networks: { name: string; masquerade: string }[] }>(
  def: L,
  pool: Cidr,
  taken: readonly Cidr[],
): L {
  const used = [...taken];
  const networks = def.networks.map((n) => {
    const own = parseCidr(n.masquerade, `${def.name} network ${n.name} masquerade`);
    if (own.prefix < pool.prefix) {
      throw new RestorelabError(
        'LAB_MASQUERADE_POOL_FULL',
        `the masquerade pool ${formatCidr(pool)} is smaller than network ${n.name} of lab ${def.name} (${n.masquerade})`,
        { hint: `give the worker a pool of at least /${own.prefix} (--masquerade)` },
      );
    }
    const size = 2 ** (32 - own.prefix);
    const blocks = 2 ** (own.prefix - pool.prefix);
    for (let i = 0; i < blocks; i++) {
      const c: Cidr = { base: (pool.base + i * size) >>> 0, prefix: own.prefix };
      if (used.some((u) => overlaps(u, c))) continue;
      used.push(c);
      return { ...n, masquerade: formatCidr(c) };
    }
    throw new RestorelabError(
      'LAB_MASQUERADE_POOL_FULL',
      `no free /${own.prefix} left in the masquerade pool ${formatCidr(pool)} for network ${n.name} of lab ${def.name}`,
      { hint: 'take labs down (restorelab lab list), or give the worker a larger pool' },
    );
  });
  return { ...def, networks };
}
