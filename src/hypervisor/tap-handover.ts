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
 *
 * Lab taps are named per namespace (`tap0`, `tap1` …), so two labs lending
 * at once would both bring a `tap0` to the host namespace, and the second
 * move fails ("an interface with the same name exists"). A lent tap is
 * renamed in the same move to a random host-side name, and back when it
 * returns; QEMU opens it by that name.
 */
import { randomBytes } from 'node:crypto';
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

export interface LentTaps {
  /** The NICs as QEMU must open them: each lent tap under its host-side name. */
  nics: NicAttachment[];
  /** Moves every lent tap back into its lab namespace, under its own name, onto its bridge. */
  giveBack(): Promise<void>;
}

/** A name no lab uses (`rlt` and 10 hex digits: 13 characters, under the kernel's 15). */
function hostSideName(): string {
  return `rlt${randomBytes(5).toString('hex')}`;
}

/** Moves every lab tap of `nics` to the host namespace, renamed (see the module doc). */
export async function lendLabTaps(nics: NicAttachment[]): Promise<LentTaps> {
  const moved: { hostName: string; tap: string; netns: string; bridge: string }[] = [];
  const giveBack = async (): Promise<void> => {
    for (const m of moved.splice(0)) {
      await ip(['link', 'set', m.hostName, 'netns', m.netns, 'name', m.tap]);
      await ip(['-n', m.netns, 'link', 'set', m.tap, 'master', m.bridge, 'up']);
    }
  };
  const asOpened: NicAttachment[] = [];
  try {
    for (const n of nics) {
      if (n.kind !== 'tap' || !n.netns) {
        asOpened.push(n);
        continue;
      }
      const bridge = await labTapBridge(n.netns, n.tap);
      const hostName = hostSideName();
      await ip(['-n', n.netns, 'link', 'set', n.tap, 'netns', '1', 'name', hostName]);
      moved.push({ hostName, tap: n.tap, netns: n.netns, bridge });
      asOpened.push({ ...n, tap: hostName });
    }
  } catch (e) {
    await giveBack().catch(() => undefined);
    throw e;
  }
  return { nics: asOpened, giveBack };
}
