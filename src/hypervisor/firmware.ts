/**
 * UEFI firmware for guests whose definition says `"firmware": "uefi"`
 * (config/schemas/vm.schema.json): OVMF's code, mapped read-only, and a
 * variable store each domain gets its own copy of, so what one recovered VM
 * writes into its EFI variables reaches no other VM and no later session.
 *
 * The copy starts from OVMF's empty template: the source VM's boot entries
 * are not in its disks, so the firmware boots the removable-media path of
 * the EFI system partition (\EFI\BOOT\BOOTX64.EFI), which Windows and the
 * usual Linux installers write (docs/hypervisors.md, "UEFI guests").
 */
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { missingComponent } from '../errors.js';
import { OVMF_BUILDS, type OvmfBuild } from '../host/ovmf.js';
import type { DomainSpec } from './types.js';

export type UefiFirmware = OvmfBuild;

/** The UEFI firmware on this host; MISSING_COMPONENT, naming the package, when there is none. */
export function uefiFirmware(builds: readonly UefiFirmware[] = OVMF_BUILDS): UefiFirmware {
  const found = builds.find((b) => existsSync(b.image) && existsSync(b.varsTemplate));
  if (!found)
    throw missingComponent(
      'UEFI firmware (OVMF)',
      `the VM definition says "firmware": "uefi"; install it with: apt-get install ovmf (looked for ${builds.map((b) => b.image).join(', ')})`,
    );
  return found;
}

/** The domain's own variable store in its directory `dir`, copied from the template the first time. */
export function domainVariableStore(dir: string, firmware: UefiFirmware): string {
  const path = join(dir, 'efivars.fd');
  if (!existsSync(path)) copyFileSync(firmware.varsTemplate, path);
  return path;
}

/** The UEFI firmware and the domain's own variable store (in its directory `dir`), when its definition asks for UEFI. */
export function firmwareFor(spec: DomainSpec, dir: string): { image: string; vars: string } | undefined {
  if (spec.vm.firmware !== 'uefi') return undefined;
  const fw = uefiFirmware();
  return { image: fw.image, vars: domainVariableStore(dir, fw) };
}
