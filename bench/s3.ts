/**
 * Object-storage benchmark: restorelab against restic's S3 backend, both on
 * the same RADOS Gateway (scripts/services), in the same run.
 *
 * Data set: one raw disk of S3_BENCH_MIB (default 1024) MiB, 1 MiB blocks of
 * three kinds in about equal parts (incompressible, log-like text, zeros),
 * its last eighth never written (a hole). Each tool backs it up once into its
 * own fresh prefix of the gateway's bucket, then restores it in full.
 *
 * Figures (each with its ratio to restic): backup time (target <= 0.5x),
 * full-restore throughput (target >= 1.5x; restic's restore is timed with
 * the sync that makes it durable, as restorelab's restore fsyncs before it
 * returns), bytes stored in the bucket, peak RSS of each backup; then where
 * the time went in each phase: CPU seconds of the tool and of the gateway
 * (radosgw + ceph-osd) and the requests radosgw logged (bench/gateway-profile.ts).
 *
 * Run: node dist/bench/s3.js   (needs restic (`scripts/setup --bench` or
 * apt-get install restic), /usr/bin/time, and the gateway: scripts/services up)
 * Knobs: S3_BENCH_MIB (disk size), S3_BENCH_DIR (work directory, default /var/tmp).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command, DeleteObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { which } from '../src/host/exec.js';
import { projectPath } from '../src/paths.js';
import { must } from './timed.js';
import { fmt, MiB, mib, writeMixedBlocks } from './data-set.js';
import { createS3Client } from '../src/repo/s3-config.js';
import { daemonsOf, formatRequests, startPhase, type PhaseCost } from './gateway-profile.js';

const SIZE_MIB = Number(process.env.S3_BENCH_MIB ?? 1024);
const SIZE = SIZE_MIB * MiB;
const bin = projectPath('bin', 'restorelab.js');

/** Bytes and objects under a prefix. */
async function stored(client: S3Client, bucket: string, prefix: string): Promise<{ bytes: number; objects: number }> {
  let bytes = 0;
  let objects = 0;
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) {
      bytes += o.Size ?? 0;
      objects++;
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return { bytes, objects };
}

async function emptyPrefix(client: S3Client, bucket: string, prefix: string): Promise<void> {
  for (;;) {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
    const keys = (page.Contents ?? []).flatMap((o) => (o.Key ? [o.Key] : []));
    if (keys.length === 0) return;
    for (let i = 0; i < keys.length; i += 32)
      await Promise.all(keys.slice(i, i + 32).map((Key) => client.send(new DeleteObjectCommand({ Bucket: bucket, Key }))));
  }
}

/** The gateway of scripts/services: `status --json` does not print credentials, the state directory's credentials.json does. */
async function gateway(): Promise<{ endpoint: string; accessKeyId: string; secretAccessKey: string; bucket: string }> {
  const r = await must(projectPath('scripts', 'services'), ['up', '--json']);
  const json = r.out.split('\n').find((l) => l.startsWith('{"s3"'));
  if (!json) throw new Error(`scripts/services up --json printed no endpoint: ${r.out.slice(-2000)}`);
  return (JSON.parse(json) as { s3: { endpoint: string; accessKeyId: string; secretAccessKey: string; bucket: string } }).s3;
}

const line = (label: string, ours: string, peer: string, ratio: number, target: string): void =>
  console.log(`${label.padEnd(28)} restorelab ${ours.padEnd(14)} restic ${peer.padEnd(14)} ratio ${fmt(ratio)}x  (target ${target})`);

async function main(): Promise<void> {
  if (!which('restic')) throw new Error('bench needs restic: scripts/setup --bench, or apt-get install restic');
  const s3 = await gateway();
  const daemons = daemonsOf((await must(projectPath('scripts', 'services'), ['status', '--json'])).out);
  const work = mkdtempSync(join(process.env.S3_BENCH_DIR ?? '/var/tmp', 'rl-bench-s3-'));
  const run = `bench-${randomBytes(4).toString('hex')}`;
  const client = createS3Client({
    endpoint: s3.endpoint,
    region: 'us-east-1',
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
  });
  const cleanup = async (): Promise<void> => {
    rmSync(work, { recursive: true, force: true });
    await emptyPrefix(client, s3.bucket, `${run}/`).catch(() => undefined);
  };
  const env = {
    ...process.env,
    RESTORELAB_HOME: work,
    RESTORELAB_STATE_DIR: join(work, 'state'),
    AWS_ENDPOINT_URL: s3.endpoint,
    AWS_ACCESS_KEY_ID: s3.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
    AWS_REGION: 'us-east-1',
    RESTIC_PASSWORD: 'bench',
  };
  const load0 = loadavg()
    .map((l) => fmt(l))
    .join(' ');
  try {
    console.log(`data set: ${SIZE_MIB} MiB raw disk (random, text and zero 1 MiB blocks, a thirds each; last eighth a hole)`);
    console.log(`gateway: ${s3.endpoint}, bucket ${s3.bucket}, prefix ${run}/`);
    const img = join(work, 'disk.raw');
    await writeMixedBlocks(img, { sizeMiB: SIZE_MIB, seed: 11 });
    const vmFile = join(work, 'vm.json');
    writeFileSync(vmFile, JSON.stringify({ name: 'bench', memoryMiB: 512, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
    const ours = `s3://${s3.bucket}/${run}/restorelab`;
    const resticRepo = `s3:${s3.endpoint}/${s3.bucket}/${run}/restic`;
    await must('node', [bin, 'repo', 'init', ours], env);
    await must('restic', ['init', '--repo', resticRepo], env);

    // Both read the image from page cache.
    await must('sh', ['-c', `cat '${img}' > /dev/null`]);
    let phase = startPhase(daemons);
    const a = await must('node', [bin, 'backup', '--repo', ours, '--vm', vmFile, '--disk', img, '--json'], env);
    const point = (JSON.parse(a.out.split('\n').find((l) => l.startsWith('{"restorePoint"')) ?? '{}') as { restorePoint?: string })
      .restorePoint;
    if (!point) throw new Error(`restorelab backup printed no restore point: ${a.out.slice(-2000)}`);
    const cost: Record<string, PhaseCost> = {};
    cost.backupOurs = phase(s3.bucket, `${run}/restorelab/`);
    await must('sh', ['-c', `cat '${img}' > /dev/null`]);
    phase = startPhase(daemons);
    const b = await must('restic', ['backup', '--repo', resticRepo, '--quiet', img], env);
    cost.backupRestic = phase(s3.bucket, `${run}/restic/`);
    console.log(
      `backup: restorelab ${fmt(a.seconds)} s (RSS ${fmt(a.maxRssKiB / 1024, 0)} MiB), restic ${fmt(b.seconds)} s (RSS ${fmt(b.maxRssKiB / 1024, 0)} MiB)`,
    );
    const size = { ours: await stored(client, s3.bucket, `${run}/restorelab/`), restic: await stored(client, s3.bucket, `${run}/restic/`) };

    await must('sync', []);
    const rOut = join(work, 'restore-ours.raw');
    phase = startPhase(daemons);
    const rs = await must('node', [bin, 'restore', '--repo', ours, point, '--disk', 'root', '--to', rOut], env);
    cost.restoreOurs = phase(s3.bucket, `${run}/restorelab/`);
    const same = Buffer.compare(await readFile(rOut), await readFile(img)) === 0;
    rmSync(rOut, { force: true });
    await must('sync', []);
    const resticTarget = join(work, 'restore-restic');
    phase = startPhase(daemons);
    const rr = await must('restic', ['restore', 'latest', '--repo', resticRepo, '--target', resticTarget], env);
    const rrSync = await must('sync', []);
    cost.restoreRestic = phase(s3.bucket, `${run}/restic/`);
    rmSync(resticTarget, { recursive: true, force: true });
    console.log(
      `restore: restorelab ${fmt(rs.seconds)} s (bytes match the source: ${same}), restic ${fmt(rr.seconds)} s + sync ${fmt(rrSync.seconds)} s`,
    );

    console.log('');
    line('backup time', `${fmt(a.seconds)} s`, `${fmt(b.seconds)} s`, a.seconds / b.seconds, '<= 0.5x');
    const thr = (s: number): number => SIZE / MiB / s;
    const restic = rr.seconds + rrSync.seconds;
    line(
      'full-restore throughput',
      `${fmt(thr(rs.seconds), 0)} MiB/s`,
      `${fmt(thr(restic), 0)} MiB/s`,
      thr(rs.seconds) / thr(restic),
      '>= 1.5x',
    );
    line('stored in the bucket', mib(size.ours.bytes), mib(size.restic.bytes), size.ours.bytes / size.restic.bytes, 'none');
    console.log(`${''.padEnd(28)} objects: restorelab ${size.ours.objects}, restic ${size.restic.objects}`);
    line('backup peak RSS', `${fmt(a.maxRssKiB / 1024, 0)} MiB`, `${fmt(b.maxRssKiB / 1024, 0)} MiB`, a.maxRssKiB / b.maxRssKiB, 'none');
    console.log('');
    console.log('where the time went (CPU seconds; gateway = radosgw + ceph-osd; requests from the radosgw log):');
    const profile = (label: string, t: { seconds: number; cpuSeconds: number }, c: PhaseCost | undefined): void =>
      console.log(
        `  ${label.padEnd(18)} ${fmt(t.seconds).padStart(6)} s wall, client CPU ${fmt(t.cpuSeconds).padStart(6)} s, gateway CPU ${fmt(c?.cpuSeconds ?? 0).padStart(6)} s, requests ${formatRequests(c?.requests ?? {})}`,
      );
    profile('backup restorelab', a, cost.backupOurs);
    profile('backup restic', b, cost.backupRestic);
    profile('restore restorelab', rs, cost.restoreOurs);
    profile('restore restic', { seconds: restic, cpuSeconds: rr.cpuSeconds }, cost.restoreRestic);
    console.log(
      `load average at the end: ${loadavg()
        .map((l) => fmt(l))
        .join(' ')} (at the start: ${load0})`,
    );
    if (!same) throw new Error('the restored disk differs from the source');
  } finally {
    await cleanup();
    client.destroy();
  }
}

await main();
