// Partition tables from byte vectors: MBR, extended/logical chains, GPT with
// its CRCs and backup header, and the corrupt cases that must be refused.
import t from 'tap';
import { readPartitionTable, formatGuid } from '../../src/flr/partitions.js';
import { identifyFilesystem } from '../../src/flr/filesystems.js';
import { RestorelabError } from '../../src/errors.js';
import { SparseDisk, mbrSector, writeGpt, guidBytes, LINUX_FS, EFI_SYSTEM, SECTOR } from './fixtures/tables.js';

const MiB = 1024 * 1024;
const noFs = async (): Promise<boolean> => false;

/** What a rejected parse threw, flattened for one t.match. */
async function failure(p: Promise<unknown>): Promise<Record<string, unknown>> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof RestorelabError)) return { notARestorelabError: err };
  return { code: err.code, exitCode: err.exitCode, message: err.message, hint: err.hint };
}

function corrupt(re: RegExp): Record<string, unknown> {
  return { code: 'CORRUPT_PARTITION_TABLE', exitCode: 2, message: re, hint: /\S/ };
}

t.test('MBR primaries are numbered by slot, with byte offsets and type names', async (t) => {
  const d = new SparseDisk(64 * MiB);
  d.write(
    0,
    mbrSector([
      { status: 0x80, type: 0x83, lba: 2048, sectors: 20480 },
      { type: 0, lba: 0, sectors: 0 },
      { type: 0x0c, lba: 22528, sectors: 8192 },
    ]),
  );
  const table = await readPartitionTable(d.read, d.size, noFs);
  t.equal(table.scheme, 'mbr');
  t.same(
    table.partitions.map((p) => [p.number, p.offset, p.size, p.type, p.typeName]),
    [
      [1, 2048 * SECTOR, 20480 * SECTOR, '83', 'linux'],
      [3, 22528 * SECTOR, 8192 * SECTOR, '0c', 'fat32-lba'],
    ],
  );
});

t.test('an extended partition yields logical partitions from 5, following the EBR chain', async (t) => {
  const d = new SparseDisk(64 * MiB);
  d.write(
    0,
    mbrSector([
      { type: 0x83, lba: 2048, sectors: 8192 },
      { type: 0x05, lba: 10240, sectors: 40960 },
    ]),
  );
  // EBR 1 at the start of the extended partition: logical at +2048, link to EBR 2 at ext+20480.
  d.write(
    10240 * SECTOR,
    mbrSector([
      { type: 0x83, lba: 2048, sectors: 8192 },
      { type: 0x05, lba: 20480, sectors: 10240 },
    ]),
  );
  d.write((10240 + 20480) * SECTOR, mbrSector([{ type: 0x82, lba: 2048, sectors: 4096 }]));
  const table = await readPartitionTable(d.read, d.size, noFs);
  t.same(
    table.partitions.map((p) => [p.number, p.offset / SECTOR, p.size / SECTOR, p.type]),
    [
      [1, 2048, 8192, '83'],
      [5, 12288, 8192, '83'],
      [6, 10240 + 20480 + 2048, 4096, '82'],
    ],
  );
});

t.test('an EBR chain that loops is corrupt', async (t) => {
  const d = new SparseDisk(64 * MiB);
  d.write(0, mbrSector([{ type: 0x0f, lba: 2048, sectors: 40960 }]));
  d.write(
    2048 * SECTOR,
    mbrSector([
      { type: 0x83, lba: 2048, sectors: 1024 },
      { type: 0x05, lba: 0, sectors: 4096 },
    ]),
  );
  t.match(await failure(readPartitionTable(d.read, d.size, noFs)), corrupt(/loops/));
});

t.test('an EBR without its signature is corrupt', async (t) => {
  const d = new SparseDisk(64 * MiB);
  d.write(0, mbrSector([{ type: 0x05, lba: 2048, sectors: 40960 }]));
  t.match(await failure(readPartitionTable(d.read, d.size, noFs)), corrupt(/extended boot record .* no 55AA/));
});

t.test('MBR entries past the end, overlapping or with a bad status byte are corrupt', async (t) => {
  const past = new SparseDisk(8 * MiB);
  past.write(0, mbrSector([{ type: 0x83, lba: 2048, sectors: 1_000_000 }]));
  t.match(await failure(readPartitionTable(past.read, past.size, noFs)), corrupt(/past the end/));
  const overlap = new SparseDisk(64 * MiB);
  overlap.write(
    0,
    mbrSector([
      { type: 0x83, lba: 2048, sectors: 8192 },
      { type: 0x83, lba: 4096, sectors: 8192 },
    ]),
  );
  t.match(await failure(readPartitionTable(overlap.read, overlap.size, noFs)), corrupt(/overlap/));
  const status = new SparseDisk(64 * MiB);
  status.write(0, mbrSector([{ status: 0x13, type: 0x83, lba: 2048, sectors: 8192 }]));
  t.match(await failure(readPartitionTable(status.read, status.size, noFs)), corrupt(/status byte/));
  const zeroStart = new SparseDisk(64 * MiB);
  zeroStart.write(0, mbrSector([{ type: 0x83, lba: 0, sectors: 8192 }]));
  t.match(await failure(readPartitionTable(zeroStart.read, zeroStart.size, noFs)), corrupt(/inside the partition table/));
});

t.test('GPT: entries with types, names and the protective MBR recognised', async (t) => {
  const d = new SparseDisk(64 * MiB);
  writeGpt(d, [
    { type: EFI_SYSTEM, first: 2048, last: 4095, name: 'EFI' },
    { type: LINUX_FS, first: 4096, last: 131038, name: 'root' },
  ]);
  const table = await readPartitionTable(d.read, d.size, noFs);
  t.equal(table.scheme, 'gpt');
  t.same(table.warnings, []);
  t.same(
    table.partitions.map((p) => [p.number, p.offset / SECTOR, p.size / SECTOR, p.typeName, p.label]),
    [
      [1, 2048, 2048, 'efi-system', 'EFI'],
      [2, 4096, 131038 - 4096 + 1, 'linux', 'root'],
    ],
  );
  t.equal(formatGuid(guidBytes(LINUX_FS)), LINUX_FS, 'GUIDs round-trip through their mixed-endian bytes');
});

t.test('GPT: a bad primary header CRC falls back to the backup header, with a warning', async (t) => {
  const d = new SparseDisk(64 * MiB);
  const at = writeGpt(d, [{ type: LINUX_FS, first: 2048, last: 8191 }]);
  d.write(at.primaryHeader + 60, Buffer.from([0x42])); // inside the CRC-covered header: disk GUID
  const table = await readPartitionTable(d.read, d.size, noFs);
  t.equal(table.partitions.length, 1);
  t.equal(table.partitions[0]!.offset, 2048 * SECTOR);
  t.match(table.warnings[0], /primary header: header CRC32 mismatch.*used the backup GPT/);
});

t.test('GPT: a bad primary entry-array CRC falls back to the backup array', async (t) => {
  const d = new SparseDisk(64 * MiB);
  const at = writeGpt(d, [{ type: LINUX_FS, first: 2048, last: 8191 }]);
  d.write(at.primaryEntries + 32, Buffer.from([0x01, 0x02])); // the first entry's start LBA
  const table = await readPartitionTable(d.read, d.size, noFs);
  t.equal(table.partitions[0]!.offset, 2048 * SECTOR, 'the backup copy is used, not the damaged one');
  t.match(table.warnings[0], /primary entry array CRC32 mismatch/);
});

t.test('GPT: both copies damaged is a corrupt table naming both problems', async (t) => {
  const d = new SparseDisk(64 * MiB);
  const at = writeGpt(d, [{ type: LINUX_FS, first: 2048, last: 8191 }]);
  d.write(at.primaryHeader + 60, Buffer.from([0x42]));
  d.write(at.backupEntries, Buffer.from([0x99]));
  t.match(
    await failure(readPartitionTable(d.read, d.size, noFs)),
    corrupt(/primary header: header CRC32 mismatch.*backup entry array CRC32 mismatch/),
  );
});

t.test('GPT: a valid CRC over an entry outside the usable area is still corrupt', async (t) => {
  const d = new SparseDisk(64 * MiB);
  writeGpt(d, [{ type: LINUX_FS, first: 10, last: 8191 }]);
  t.match(await failure(readPartitionTable(d.read, d.size, noFs)), corrupt(/outside the usable sectors/));
});

t.test('a protective MBR without any GPT header is corrupt', async (t) => {
  const d = new SparseDisk(64 * MiB);
  d.write(0, mbrSector([{ type: 0xee, lba: 1, sectors: 131071 }]));
  t.match(await failure(readPartitionTable(d.read, d.size, noFs)), corrupt(/no "EFI PART" signature/));
});

t.test('no table but a filesystem at byte 0 is one partition 0 covering the disk', async (t) => {
  const d = new SparseDisk(64 * MiB);
  // A FAT boot sector ends in 55AA too: it must not be read as an MBR.
  const boot = mbrSector([{ status: 0x33, type: 0x99, lba: 7, sectors: 9 }]);
  boot.write('FAT32   ', 82, 'latin1');
  d.write(0, boot);
  const table = await readPartitionTable(d.read, d.size, async () => identifyFilesystem(await d.read(0, 70000)) !== undefined);
  t.equal(table.scheme, 'none');
  t.same(table.partitions, [{ number: 0, offset: 0, size: 64 * MiB, type: 'whole-disk' }]);
});

t.test('no table and no filesystem gives no partitions', async (t) => {
  const d = new SparseDisk(4 * MiB);
  const table = await readPartitionTable(d.read, d.size, noFs);
  t.same(table.partitions, []);
});

t.test('filesystem magic: ext4, ext2, xfs, btrfs, vfat, ntfs, swap, LVM and unknown', async (t) => {
  const head = (): Buffer => Buffer.alloc(70000);
  const ext4 = head();
  ext4.writeUInt16LE(0xef53, 1024 + 56);
  ext4.writeUInt32LE(0x40 | 0x2, 1024 + 96);
  ext4.write('rootfs', 1024 + 120, 'latin1');
  t.match(identifyFilesystem(ext4), { fstype: 'ext4', driver: 'ext4', label: 'rootfs' });
  const ext2 = head();
  ext2.writeUInt16LE(0xef53, 1024 + 56);
  t.match(identifyFilesystem(ext2), { fstype: 'ext2', driver: 'ext4' });
  const xfs = head();
  xfs.write('XFSB', 0, 'latin1');
  t.match(identifyFilesystem(xfs), { fstype: 'xfs', driver: 'xfs' });
  const btrfs = head();
  btrfs.write('_BHRfS_M', 65536 + 64, 'latin1');
  t.match(identifyFilesystem(btrfs), { fstype: 'btrfs', driver: 'btrfs' });
  const fat16 = head();
  fat16.write('FAT16   ', 54, 'latin1');
  fat16[510] = 0x55;
  fat16[511] = 0xaa;
  t.match(identifyFilesystem(fat16), { fstype: 'vfat', driver: 'vfat' });
  const ntfs = head();
  ntfs.write('NTFS    ', 3, 'latin1');
  t.match(identifyFilesystem(ntfs), { fstype: 'ntfs', driver: 'ntfs3' });
  const swap = head();
  swap.write('SWAPSPACE2', 4086, 'latin1');
  t.same(identifyFilesystem(swap), { fstype: 'swap' }, 'swap is named but has no driver');
  const lvm = head();
  lvm.write('LVM2 001', 536, 'latin1');
  t.same(identifyFilesystem(lvm), { fstype: 'LVM2_member' });
  t.equal(identifyFilesystem(Buffer.alloc(70000, 0x5a)), undefined);
});
