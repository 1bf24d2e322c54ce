/**
 * The test guests scripts/build-guests makes (variants described in
 * lab-templates/guests/). Tests ask for an image by variant; the builder's
 * own stamp check makes a second call cheap, and its lock makes concurrent
 * test files wait for one build instead of racing.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { exec, which } from '../../src/host/exec.js';
import { projectPath } from '../../src/paths.js';

export interface GuestService {
  kind: 'http' | 'banner' | 'dns';
  protocol: 'tcp' | 'udp';
  port: number;
  starts: boolean;
  query?: string;
  expect: string;
}

export interface GuestVariant {
  name: string;
  description: string;
  hostname?: string;
  network: string;
  ip: string;
  prefix?: number;
  gateway: string;
  mac: string;
  boot: 'ok' | 'kernel-panic';
  agent: boolean;
  services: GuestService[];
}

const TEMPLATES = projectPath('lab-templates', 'guests');

function loadVariants(): Record<string, GuestVariant> {
  const out: Record<string, GuestVariant> = {};
  for (const f of readdirSync(TEMPLATES).filter((n) => n.endsWith('.json')).sort()) {
    const g = JSON.parse(readFileSync(join(TEMPLATES, f), 'utf8')) as GuestVariant;
    out[g.name] = g;
  }
  return out;
}

/** Every variant by name, as lab-templates/guests/<name>.json describes it. */
export const GUESTS: Readonly<Record<string, GuestVariant>> = loadVariants();

/** Where images live: RESTORELAB_GUESTS_DIR, else var/guests in the project. */
export function guestsDir(): string {
  return process.env.RESTORELAB_GUESTS_DIR ?? projectPath('var', 'guests');
}

/** The kernel the builder extracted (for direct -kernel boots), if built. */
export function guestKernel(): string | undefined {
  const p = join(guestsDir(), 'vmlinuz');
  return existsSync(p) ? p : undefined;
}

const BUILD_TOOLS: [string, string][] = [
  ['apt-get', 'apt'], ['dpkg-deb', 'dpkg'], ['sfdisk', 'fdisk'], ['mkfs.ext4', 'e2fsprogs'],
  ['losetup', 'mount'], ['extlinux', 'extlinux'], ['cpio', 'cpio'], ['flock', 'util-linux'],
];

/**
 * Absolute path of the raw image of `variant`, built (or rebuilt after a
 * recipe change) first. Throws naming the missing tool or the builder's error.
 */
export async function guestImage(variant: string): Promise<string> {
  if (!GUESTS[variant]) {
    throw new Error(`unknown test guest "${variant}"; known: ${Object.keys(GUESTS).join(', ')} (lab-templates/guests/)`);
  }
  for (const [tool, pkg] of BUILD_TOOLS) {
    if (!which(tool)) throw new Error(`building test guests needs ${tool}: apt-get install ${pkg} (or run scripts/setup)`);
  }
  if (!existsSync('/usr/lib/EXTLINUX/mbr.bin')) {
    throw new Error('building test guests needs /usr/lib/EXTLINUX/mbr.bin: apt-get install extlinux syslinux-common');
  }
  const dir = guestsDir();
  const r = await exec(projectPath('scripts', 'build-guests'), ['--out', dir, variant], { timeoutMs: 15 * 60_000 });
  if (r.code !== 0) {
    throw new Error(`scripts/build-guests --out ${dir} ${variant} failed (exit ${String(r.code)}): ${(r.stderr || r.stdout).trim().split('\n').slice(-5).join('\n')}`);
  }
  const image = join(dir, `${variant}.raw`);
  if (!existsSync(image)) throw new Error(`scripts/build-guests did not produce ${image}`);
  return image;
}
