/**
 * A UEFI-only variant of a test guest, made from its BIOS image the way an
 * installer lays out a UEFI disk: an EFI system partition (FAT) holding the
 * removable-media loader \EFI\BOOT\BOOTX64.EFI (a standalone GRUB whose
 * embedded configuration boots the guest's kernel), then the guest's own
 * root partition, copied unchanged. The MBR has no boot code, so only UEFI
 * firmware boots it: a VM started with a BIOS never reaches the kernel.
 * FAT is written with mtools (no vfat driver on the host needed).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const SECTOR = 512;
const ESP_START = 2048;
const ESP_SECTORS = 32768;
/** Where the BIOS images keep their one partition (scripts/build-guests). */
const GUEST_ROOT_START = 2048;

function tool(name: string, pkg: string): string {
  for (const dir of ['/usr/bin', '/usr/sbin', '/bin', '/sbin']) if (existsSync(join(dir, name))) return join(dir, name);
  throw new Error(`the UEFI guest needs ${name}: apt-get install ${pkg} (scripts/setup installs it)`);
}

function run(name: string, pkg: string, args: string[], input?: string): void {
  execFileSync(tool(name, pkg), args, { input, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Writes `<dir>/<name>.raw`, the UEFI layout of the BIOS guest image `bios`; returns its path. */
export function uefiGuestImage(bios: string, dir: string, name: string): string {
  const rootSectors = statSync(bios).size / SECTOR - GUEST_ROOT_START;
  const rootStart = ESP_START + ESP_SECTORS;
  const image = join(dir, `${name}.raw`);
  const cfg = join(dir, `${name}-grub.cfg`);
  const loader = join(dir, `${name}-BOOTX64.EFI`);
  writeFileSync(
    cfg,
    [
      'set timeout=0',
      'insmod part_msdos',
      'insmod ext2',
      'set root=(hd0,msdos2)',
      'linux /boot/vmlinuz root=/dev/vda2 rw console=tty0 console=ttyS0,115200 panic=0',
      'initrd /boot/initrd.gz',
      'boot',
      '',
    ].join('\n'),
  );
  run('grub-mkstandalone', 'grub-efi-amd64-bin', [
    '-O',
    'x86_64-efi',
    '--modules=part_msdos ext2 linux normal',
    '--locales=',
    '--fonts=',
    '--themes=',
    '-o',
    loader,
    `boot/grub/grub.cfg=${cfg}`,
  ]);
  run('truncate', 'coreutils', ['-s', String((rootStart + rootSectors) * SECTOR), image]);
  run(
    'sfdisk',
    'fdisk',
    ['-q', image],
    `label: dos\nstart=${ESP_START}, size=${ESP_SECTORS}, type=ef\nstart=${rootStart}, size=${rootSectors}, type=83\n`,
  );
  const esp = `${image}@@${ESP_START * SECTOR}`;
  run('mformat', 'mtools', ['-i', esp, '-T', String(ESP_SECTORS), '-v', 'ESP', '::']);
  run('mmd', 'mtools', ['-i', esp, '::/EFI', '::/EFI/BOOT']);
  run('mcopy', 'mtools', ['-i', esp, loader, '::/EFI/BOOT/BOOTX64.EFI']);
  run('dd', 'coreutils', [
    `if=${bios}`,
    `of=${image}`,
    `bs=${SECTOR}`,
    `skip=${GUEST_ROOT_START}`,
    `seek=${rootStart}`,
    `count=${rootSectors}`,
    'conv=notrunc,sparse',
    'status=none',
  ]);
  return image;
}
