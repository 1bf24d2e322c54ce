/**
 * Lab taps lent to a QEMU that runs in the host namespace.
 *
 * A lab tap lives inside its lab namespace, where QEMU opening it by name
 * would have to run too. When QEMU must stay in the host namespace (libvirt
 * always starts it there; the qemu driver does when a disk is an `nfs://`
 * URL of a server on the host's loopback), the tap is moved to the host
 * namespace for the start, QEMU opens it, and it goes back into the lab
 * namespace and onto its bridge: an open tap fd follows its device across
 * namespaces. While lent, the tap is on no bridge, so nothing crosses.
 */
import { RestorelabError } from '../errors.js';
import { exec } from '../host/exec.js';
import type { NicAttachment } from './types.js';

async function ip(args: string[]): Promise<string> {
  const r = await exec('ip', args, { timeoutMs: 30_000 });
  if (r.code !== 0) throw new RestorelabError('HOST_COMMAND_FAILED', `ip ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

async function labTapBridge(netns: string, tap: string): Promise<string> {
  const j = JSON.parse(await ip(['-n', netns, '-j', 'link', 'show', tap])) as { master?: string }[];
  const master = j[0]?.master;
  if (!master) throw new RestorelabError('LAB_TAP_UNATTACHED', `tap ${tap} in ${netns} is on no bridge`);
  return master;
}

/** Moves every lab tap of `nics` to the host namespace; the result gives them back. */
export async function lendLabTaps(nics: NicAttachment[]): Promise<{ giveBack(): Promise<void> }> {
  const moved: { tap: string; netns: string; bridge: string }[] = [];
  const giveBack = async (): Promise<void> => {
    for (const m of moved.splice(0)) {
      await ip(['link', 'set', m.tap, 'netns', m.netns]);
      await ip(['-n', m.netns, 'link', 'set', m.tap, 'master', m.bridge, 'up']);
    }
  };
  try {
    for (const n of nics) {
      if (n.kind !== 'tap' || !n.netns) continue;
      const bridge = await labTapBridge(n.netns, n.tap);
      await ip(['-n', n.netns, 'link', 'set', n.tap, 'netns', '1']);
      moved.push({ tap: n.tap, netns: n.netns, bridge });
    }
  } catch (e) {
    await giveBack().catch(() => undefined);
    throw e;
  }
  return { giveBack };
}
