/**
 * Host bridges a VM NIC may join (`--network <bridge>`, a bridge NIC of a
 * domain). Whether one exists is a fact about the host, not about a
 * hypervisor: both drivers and the recovery plan ask here.
 */
import { badInput } from '../errors.js';
import { exec } from './exec.js';

/** Throws BRIDGE_NOT_FOUND (bad input) for the first of `bridges` that is not a bridge in the host namespace. */
export async function assertBridgesExist(bridges: readonly string[]): Promise<void> {
  for (const bridge of bridges) {
    const r = await exec('ip', ['-j', 'link', 'show', 'dev', bridge, 'type', 'bridge'], { timeoutMs: 5000 });
    if (r.code !== 0 || r.stdout.trim() === '' || r.stdout.trim() === '[]') {
      throw badInput(
        'BRIDGE_NOT_FOUND',
        `bridge ${bridge} does not exist on this host`,
        'create it first (ip link add NAME type bridge) or use --lab for an isolated lab',
      );
    }
  }
}
