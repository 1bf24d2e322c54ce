/**
 * Scanning restore points for malware with YARA (docs/secure-restore.md).
 *
 * Each partition of the point is a *target* (src/scan/targets.ts): an
 * ext2/3/4 partition the in-process reader accepts is read straight from the
 * repository, without a holder process, loop device or mount
 * (src/scan/inprocess.ts, src/fsread); any other is mounted read-only,
 * `nodev,nosuid,noexec`, by the file-level-restore machinery (src/flr). Every
 * regular file is hashed (SHA-256); a file whose content has a verdict for
 * this rule set in the catalog is answered from it, the others go to yara in
 * batches while the walk goes on. A file unchanged since a scanned point of
 * the same VM (same extents over the same chunk bytes: src/scan/filemap.ts)
 * is not even read: its hash is known. Mounts are taken down whatever happens.
 *
 * Library first: `restorelab scan`, `recover --scan`, a SureBackup job's
 * `scan` and the API's scan route all call scanPoint / findLastClean.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RestorelabError, badInput, notFound } from '../errors.js';
import type { Catalog } from '../catalog/sql.js';
import type { RepositoryReader, RestorePoint } from '../repo/contract.js';
import type { MountedPartition } from '../flr/session.js';
import { mountRestorePoint, umountSession } from '../flr/mount.js';
import { makeSessionsDir } from '../flr/session.js';
import { checkApiRules } from './rules-policy.js';
import { compileRules, YaraScan, type CompiledRules } from './yara.js';
import type { Extent } from './extents.js';
import { FileMap } from './filemap.js';
import { mountTarget, type ReadFile, type ScanTarget, type ScanVia, type TargetFile } from './targets.js';
import { partitionKey, planInProcess, type InProcessPlan } from './inprocess.js';
import { VerdictCache, recordPointScan, type ScanMatch, type ScanVerdict } from './store.js';

export { compileRules, type CompiledRules } from './yara.js';

/**
 * Bytes of files handed to yara and not answered yet: their copies (memory,
 * on tmpfs) are bounded by it; the walk waits when yara is behind. Enough
 * for yara's threads never to run dry while the next files are read.
 */
const YARA_HELD_BYTES = 64 * 1024 * 1024;
/** Files handed to yara and not answered yet, at most (same reason, for many small files). */
const YARA_HELD_FILES = 2048;
/** Verdicts written to the catalog per transaction. */
const VERDICTS_PER_WRITE = 1000;
/** Files hashed at once (reads overlap: the point is served through FUSE, chunk by chunk). */
const HASH_CONCURRENCY = 4;
/** Files whose extents one filefrag process reads. */
const EXTENT_GROUP = 256;
/**
 * Files of an in-process partition read in disk order at a time. Directory
 * order is not disk order (ext4 spreads directories over block groups, so a
 * 1 MiB chunk holds files of many directories): read in walk order, the
 * bench's point decoded each chunk 9 times over through a 64 MiB chunk
 * cache; in disk order, about once. A window of files (their inodes, a few
 * hundred bytes each) bounds the memory whatever the file count.
 */
const READ_WINDOW = 4096;
/** Unreadable files named in an error, at most. */
const ERRORS_NAMED = 5;

export interface ScanFiles {
  /** Files yara read. */
  scanned: number;
  /** Files answered without yara: a verdict for their content and rule set was known (from an earlier scan, or a copy earlier in this one). */
  cached: number;
}

export interface PartitionScan {
  disk: string;
  partition: number;
  /** The LVM logical volume ("vg/lv") in that partition, when it is one. */
  volume?: string;
  fstype: string;
  /** How its files were reached: the in-process ext reader, or a kernel mount. */
  via: ScanVia;
  /** Why a partition of the point was mounted rather than read in-process (another filesystem, an ext feature the reader refuses). */
  mountReason?: string;
  /** Why the partition was not scanned (swap, LVM, a filesystem without a driver here). */
  skipped?: string;
  files?: number;
}

export interface PointScan {
  point: string;
  vm: string;
  verdict: ScanVerdict;
  matches: ScanMatch[];
  files: ScanFiles;
  /** Of the cached files, those not even read: unchanged since a scanned point of the same VM (src/scan/filemap.ts). */
  unread: number;
  partitions: PartitionScan[];
  ruleset: string;
  seconds: number;
  /** Where the time went: publishing and mounting, walking/hashing/scanning, unmounting (seconds). */
  timings: { mount: number; scan: number; unmount: number } & ScanPhases;
}

/** The document `scan --json` (and the API's scan result) carries for one point; scripts depend on its first four keys. */
export function scanOutput(s: PointScan): Record<string, unknown> {
  return {
    point: s.point,
    verdict: s.verdict,
    matches: s.matches,
    files: s.files,
    unread: s.unread,
    vm: s.vm,
    ruleset: s.ruleset,
    partitions: s.partitions,
    seconds: s.seconds,
    timings: s.timings,
  };
}

/**
 * Where the scan's own time went (seconds): `walk` the directory walk,
 * `extents` filefrag, `yara` waiting for yara after the walk; `compare` and
 * `hash` add up the time of the files' comparisons and reads, which overlap
 * (four at a time), so they can exceed the wall time.
 */
export interface ScanPhases {
  walk: number;
  extents: number;
  compare: number;
  hash: number;
  yara: number;
}

export interface ScanProgress {
  (done: { files: number; bytes: number; partition: string }): void;
}

interface Pending {
  sha: string;
  where: { disk: string; partition: number; volume?: string; path: string }[];
}

/**
 * Scans mounted partitions: the engine under scanPoint, usable on any
 * read-only mount (the benchmark scans a plain loop mount with it too).
 */
export async function scanPartitions(
  mounts: readonly MountedPartition[],
  rules: CompiledRules,
  cache: VerdictCache,
  onProgress?: ScanProgress,
  opts: { fileMap?: FileMap } = {},
): Promise<ScanResult> {
  return scanTargets(mounts.map(mountTarget), rules, cache, onProgress, opts);
}

type ScanResult = { matches: ScanMatch[]; files: ScanFiles; partitions: PartitionScan[]; phases: ScanPhases };

/** The engine: walks, hashes and scans each target, whichever way its files are reached (src/scan/targets.ts). */
export async function scanTargets(
  targets: readonly ScanTarget[],
  rules: CompiledRules,
  cache: VerdictCache,
  onProgress?: ScanProgress,
  opts: { fileMap?: FileMap } = {},
): Promise<ScanResult> {
  const phases: ScanPhases = { walk: 0, extents: 0, compare: 0, hash: 0, yara: 0 };
  const since = (t: bigint): number => Number(process.hrtime.bigint() - t) / 1e9;
  const matches: ScanMatch[] = [];
  const files: ScanFiles = { scanned: 0, cached: 0 };
  const partitions: PartitionScan[] = [];
  const errors: string[] = [];
  let errorCount = 0;
  // Content seen in this scan, by hash: a second copy waits for (or reuses) the first's verdict.
  const known = new Map<string, string[]>();
  let seenFiles = 0;
  /** The first error of a hashing job or of yara, rethrown once the jobs in flight are done. */
  let failure: unknown;
  let seenBytes = 0;

  const answer = (sha: string, rules: string[], where: Pending['where']): void => {
    for (const w of where)
      for (const rule of rules)
        matches.push({ rule, disk: w.disk, partition: w.partition, ...(w.volume ? { volume: w.volume } : {}), path: w.path, sha256: sha });
  };

  /** Content handed to yara that it has not answered yet, by hash: a copy joins it instead of being scanned twice. */
  const pending = new Map<string, Pending>();
  /** One yara for the whole scan, started with the first file it has to read. */
  let yara: YaraScan | undefined;
  /** yara's answers still to come (each settles once its file is answered and its copy removed). */
  const answers = new Set<Promise<void>>();
  let heldBytes = 0;
  let heldFiles = 0;
  let wakeHeld: (() => void) | undefined;
  /** Verdicts not yet in the catalog, and the write under way. */
  let verdicts: [string, string[]][] = [];
  let storing: Promise<void> = Promise.resolve();
  const store = (): void => {
    const rows = verdicts;
    verdicts = [];
    storing = storing.then(() => cache.storeAll(rows));
    storing.catch((err: unknown) => {
      failure ??= err;
    });
  };

  /** Hands a copy to yara; resolves once the list took it and yara holds less than its bound. */
  const toYara = async (entry: Pending, copy: ReadFile, size: number): Promise<void> => {
    yara ??= new YaraScan(rules);
    const { queued, answer: said } = yara.add(copy.path);
    heldBytes += size;
    heldFiles++;
    const settled = said
      .then(
        (a) => {
          pending.delete(entry.sha);
          if ('error' in a) {
            errorCount += entry.where.length;
            const w = entry.where[0]!;
            if (errors.length < ERRORS_NAMED) errors.push(`${w.disk} p${w.partition} ${w.path}: ${a.error}`);
            return;
          }
          files.scanned++;
          files.cached += entry.where.length - 1;
          known.set(entry.sha, a.rules);
          answer(entry.sha, a.rules, entry.where);
          verdicts.push([entry.sha, a.rules]);
          if (verdicts.length >= VERDICTS_PER_WRITE) store();
        },
        (err: unknown) => {
          failure ??= err;
        },
      )
      .finally(() => {
        copy.release();
        heldBytes -= size;
        heldFiles--;
        answers.delete(settled);
        wakeHeld?.();
      });
    answers.add(settled);
    await queued;
    while ((heldBytes > YARA_HELD_BYTES || heldFiles > YARA_HELD_FILES) && failure === undefined)
      await new Promise<void>((resolve) => {
        const before = wakeHeld;
        wakeHeld = () => {
          wakeHeld = before;
          resolve();
          before?.();
        };
      });
  };

  for (const m of targets) {
    const volume = m.volume !== undefined ? { volume: m.volume } : {};
    if (m.skipped) {
      partitions.push({ disk: m.disk, partition: m.partition, ...volume, fstype: m.fstype, via: m.via, skipped: m.skipped });
      continue;
    }
    const part: PartitionScan = { disk: m.disk, partition: m.partition, ...volume, fstype: m.fstype, via: m.via, files: 0 };
    partitions.push(part);
    const inFlight = new Set<Promise<void>>();
    const map = m.volume === undefined ? opts.fileMap?.partition(m) : undefined;
    const start = (f: TargetFile, extents: Extent[] | null): void => {
      part.files!++;
      const guestPath = f.guestPath.toString('utf8');
      const where = { disk: m.disk, partition: m.partition, ...volume, path: guestPath };
      const job = (async () => {
        // Unchanged since the reference point (same extents, same chunks): its hash is known and it is not read.
        let at = process.hrtime.bigint();
        const ref = await map?.known(f.guestPath, f.size, extents);
        let sha = ref?.proven ? ref.sha256 : undefined;
        phases.compare += since(at);
        /** Where yara reads the file; unread files are answered from the reference's verdicts, never scanned. */
        let read: ReadFile | undefined;
        if (ref && !ref.proven) {
          // Same place as in the reference, in a chunk that changed: most such files did not, and hashing needs no copy for yara.
          try {
            at = process.hrtime.bigint();
            const now = await m.hash(f);
            phases.hash += since(at);
            if (now === ref.sha256) {
              map!.confirmed();
              sha = now;
            }
          } catch {
            // Read below, where an error is counted and named.
          }
        }
        if (sha === undefined) {
          try {
            at = process.hrtime.bigint();
            const r = await m.read(f);
            read = r;
            sha = r.sha;
            phases.hash += since(at);
          } catch (err) {
            errorCount++;
            if (errors.length < ERRORS_NAMED) errors.push(`${m.disk} p${m.partition} ${guestPath}: ${(err as Error).message}`);
            return;
          }
        }
        await map?.record(f.guestPath, f.size, extents, sha);
        seenFiles++;
        seenBytes += f.size;
        onProgress?.({ files: seenFiles, bytes: seenBytes, partition: `${m.disk} p${m.partition}` });
        // Nothing awaits between the pending check below and its set, so copies still join one batch entry.
        const cached = known.get(sha) ?? (await cache.lookup(sha));
        if (cached !== undefined) {
          read?.release();
          files.cached++;
          known.set(sha, cached);
          answer(sha, cached, [where]);
          return;
        }
        const same = pending.get(sha);
        if (same) {
          read?.release();
          same.where.push(where);
          return;
        }
        const entry: Pending = { sha, where: [where] };
        pending.set(sha, entry);
        // A file answered unread has no verdict for this rule set: read it now.
        const copy = read ?? (await m.read(f));
        await toYara(entry, copy, f.size);
      })().catch((err: unknown) => {
        failure ??= err;
      });
      inFlight.add(job);
      void job.then(() => inFlight.delete(job));
    };
    // The reader knows extents from the inode (cheap) and reads in disk order; a mount pays one filefrag per group, only for a file map.
    const inDiskOrder = m.via === 'reader';
    const groupFiles = inDiskOrder ? READ_WINDOW : EXTENT_GROUP;
    /** Starts the files of one group, their extents read first (one filefrag through a mount) when needed. */
    const runGroup = async (group: TargetFile[]): Promise<void> => {
      const at = process.hrtime.bigint();
      const extents = map || inDiskOrder ? await m.extents(group) : group.map(() => null);
      phases.extents += since(at);
      const order = group.map((_, i) => i);
      // Files without plain extents (inline, unwritten) last; the sort is stable.
      const where = (i: number): number => extents[i]?.[0]?.physical ?? Number.MAX_SAFE_INTEGER;
      if (inDiskOrder) order.sort((a, b) => where(a) - where(b));
      for (const i of order) {
        if (failure !== undefined) return;
        start(group[i]!, extents[i] ?? null);
        if (inFlight.size >= HASH_CONCURRENCY) await Promise.race(inFlight);
      }
    };
    let group: TargetFile[] = [];
    let walking = process.hrtime.bigint();
    for await (const f of m.files()) {
      phases.walk += since(walking);
      group.push(f);
      if (group.length >= groupFiles) {
        await runGroup(group);
        group = [];
      }
      if (failure !== undefined) break;
      walking = process.hrtime.bigint();
    }
    if (failure === undefined) await runGroup(group);
    await Promise.all(inFlight);
    if (failure !== undefined) {
      await yara?.abort();
      await Promise.all(answers);
      await storing.catch(() => undefined);
      throw failure;
    }
  }
  const waiting = process.hrtime.bigint();
  try {
    await yara?.end();
  } finally {
    await Promise.all(answers);
  }
  phases.yara += since(waiting);
  store();
  await storing;
  if (failure !== undefined) throw failure;
  if (errorCount > 0) {
    throw new RestorelabError(
      'SCAN_INCOMPLETE',
      `${errorCount} file(s) could not be read, so the point cannot be called clean or infected: ${errors.join('; ')}${errorCount > errors.length ? '; …' : ''}`,
      {
        hint: 'a damaged chunk shows as an I/O error: run `restorelab verify --repo R <point>`; nothing was recorded for this scan',
      },
    );
  }
  matches.sort(
    (a, b) => a.disk.localeCompare(b.disk) || a.partition - b.partition || a.path.localeCompare(b.path) || a.rule.localeCompare(b.rule),
  );
  const r3 = (x: number): number => Math.round(x * 1000) / 1000;
  return {
    matches,
    files,
    partitions,
    phases: {
      walk: r3(phases.walk),
      extents: r3(phases.extents),
      compare: r3(phases.compare),
      hash: r3(phases.hash),
      yara: r3(phases.yara),
    },
  };
}

export interface ScanPointOptions {
  repo: RepositoryReader;
  point: string;
  stateDir: string;
  db: Catalog;
  rules: CompiledRules;
  keyFile?: string;
  onProgress?: ScanProgress;
  /** Called with the mounts once they are up (progress messages); not called when nothing is mounted. */
  onMounted?: (mounts: readonly MountedPartition[]) => void;
  /**
   * `auto` (the default): ext2/3/4 partitions the in-process reader accepts
   * are read from the repository without a mount, the others are mounted.
   * `mount`: every partition through a kernel mount (as before the reader).
   */
  via?: 'auto' | 'mount';
  /** Where the reader's small copies for yara go (a tmpfs directory; default /dev/shm); false: the state directory only. */
  memoryScratch?: string | false;
}

/**
 * Scans `point`: its ext partitions in-process (src/scan/inprocess.ts), the
 * others mounted read-only in a temporary file-level-restore session, and
 * records the result in the catalog. Mounts are taken down whatever happens.
 */
export async function scanPoint(o: ScanPointOptions): Promise<PointScan> {
  const started = Date.now();
  const point = await o.repo.getPoint(o.point);
  const parent = mkdtempSync(join(makeSessionsDir(o.stateDir), 'scan-'));
  let plan: InProcessPlan | undefined;
  let session: Awaited<ReturnType<typeof mountRestorePoint>> | undefined;
  try {
    const t0 = Date.now();
    if (o.via !== 'mount')
      plan = await planInProcess({
        repo: o.repo,
        point,
        scratch: join(parent, 'files'),
        ...(o.keyFile ? { keyFile: o.keyFile } : {}),
        ...(o.memoryScratch !== undefined ? { memoryScratch: o.memoryScratch } : {}),
      });
    const targets: ScanTarget[] = [...(plan?.targets ?? [])];
    if (!plan || plan.needMount) {
      session = await mountRestorePoint({
        stateDir: o.stateDir,
        repo: o.repo.path,
        point: point.id,
        dir: join(parent, 'mnt'),
        temporary: true,
        ...(o.keyFile ? { keyFile: o.keyFile } : {}),
      });
      o.onMounted?.(session.mounts);
      for (const m of session.mounts) if (!plan?.handled.has(partitionKey(m.disk, m.partition))) targets.push(mountTarget(m));
    }
    targets.sort((a, b) => a.disk.localeCompare(b.disk) || a.partition - b.partition);
    const t1 = Date.now();
    let result: ScanResult;
    let fileMap: FileMap | undefined;
    let t2 = t1;
    try {
      // Logical volumes share their partition's number, which keys the file map's rows: they are read in full every time.
      const mapped = targets.filter((x) => x.volume === undefined);
      fileMap = await FileMap.open(o.db, o.repo, point, mapped);
      const cache = await VerdictCache.open(o.db, o.rules.hash);
      await cache.preload(o.repo.path, fileMap.references());
      result = await scanTargets(targets, o.rules, cache, o.onProgress, { fileMap });
      await fileMap.commit();
    } finally {
      t2 = Date.now();
      const s = session;
      session = undefined;
      if (s) await umountSession(o.stateDir, s.id);
    }
    for (const p of result.partitions) {
      const why = plan?.reasons.get(partitionKey(p.disk, p.partition));
      if (why !== undefined && p.via === 'mount') p.mountReason = why;
    }
    const timings = { mount: (t1 - t0) / 1000, scan: (t2 - t1) / 1000, unmount: (Date.now() - t2) / 1000, ...result.phases };
    const scan: PointScan = {
      point: point.id,
      vm: point.vm.name,
      verdict: result.matches.length > 0 ? 'infected' : 'clean',
      matches: result.matches,
      files: result.files,
      unread: fileMap?.unread ?? 0,
      partitions: result.partitions,
      ruleset: o.rules.hash,
      seconds: (Date.now() - started) / 1000,
      timings,
    };
    await recordPointScan(o.db, {
      repo: o.repo.path,
      point: point.id,
      vm: point.vm.name,
      ruleset: o.rules.hash,
      verdict: scan.verdict,
      scannedAt: new Date().toISOString(),
      matches: scan.matches,
      files: scan.files,
    });
    return scan;
  } finally {
    if (session) await umountSession(o.stateDir, session.id).catch(() => undefined);
    await plan?.close();
    rmSync(parent, { recursive: true, force: true });
  }
}

export interface LastCleanResult {
  vm: string;
  lastClean: string | null;
  points: { id: string; verdict: ScanVerdict }[];
}

export interface LastCleanOptions extends Omit<ScanPointOptions, 'point'> {
  vm: string;
  /** Only points at or after / before this time (ISO 8601). */
  since?: string;
  until?: string;
  /** Called before each point is scanned. */
  onPoint?: (p: RestorePoint, index: number, total: number) => void;
}

/** Scans a VM's points newest first and stops at the first clean one. */
export async function findLastClean(o: LastCleanOptions): Promise<LastCleanResult> {
  const all = await o.repo.listPoints({ vm: o.vm });
  if (all.length === 0)
    throw notFound(
      'VM_NOT_FOUND',
      `the repository ${o.repo.path} has no restore point of a VM named ${o.vm}`,
      'check the VM name (restorelab points lists what the repository holds)',
    );
  const since = o.since === undefined ? -Infinity : Date.parse(o.since);
  const until = o.until === undefined ? Infinity : Date.parse(o.until);
  if (Number.isNaN(since) || Number.isNaN(until))
    throw badInput(
      'BAD_TIME',
      `--since/--until must be ISO 8601 times (got ${o.since ?? ''} ${o.until ?? ''})`,
      'e.g. --since 2026-11-01T00:00:00Z',
    );
  const points = all
    .filter((p) => Date.parse(p.time) >= since && Date.parse(p.time) <= until)
    .sort((a, b) => b.time.localeCompare(a.time) || b.id.localeCompare(a.id));
  const out: LastCleanResult = { vm: o.vm, lastClean: null, points: [] };
  for (const [i, p] of points.entries()) {
    o.onPoint?.(p, i, points.length);
    const s = await scanPoint({ ...o, point: p.id });
    out.points.push({ id: p.id, verdict: s.verdict });
    if (s.verdict === 'clean') {
      out.lastClean = p.id;
      break;
    }
  }
  return out;
}

/** Compiled rule sets kept between scans (src/scan/yara.ts), in the user's own state directory. */
export function compiledRulesCache(stateDir: string): string {
  return join(stateDir, 'scan', 'compiled');
}

/**
 * Compiles `rulesFile` in a private scratch directory of the state directory
 * (or takes it compiled from the state directory's cache), runs `use`, and
 * removes the scratch.
 */
export async function withRules<T>(stateDir: string, rulesFile: string, use: (rules: CompiledRules) => Promise<T>): Promise<T> {
  const scratch = join(stateDir, 'scan');
  mkdirSync(scratch, { recursive: true, mode: 0o700 });
  const rules = await compileRules(rulesFile, scratch, { cacheDir: compiledRulesCache(stateDir) });
  try {
    return await use(rules);
  } finally {
    rules.dispose();
  }
}

/**
 * Compiles rule source text (the API's body): checked against the API's rule
 * policy (no include, only safe modules: src/scan/rules-policy.ts), written to
 * a private file, compiled, the file removed; the caller disposes the rules.
 */
export async function compileRuleSource(stateDir: string, source: string): Promise<CompiledRules> {
  checkApiRules(source);
  const scratch = join(stateDir, 'scan');
  mkdirSync(scratch, { recursive: true, mode: 0o700 });
  const dir = mkdtempSync(join(scratch, 'src-'));
  const file = join(dir, 'rules.yar');
  try {
    writeFileSync(file, source, { mode: 0o600 });
    return await compileRules(file, scratch, { cacheDir: compiledRulesCache(stateDir) });
  } catch (err) {
    // yarac names the scratch file: the client sent text, and where the server keeps its scratch is not its to know.
    if (err instanceof RestorelabError && err.code === 'YARA_RULES_INVALID')
      throw badInput(
        'YARA_RULES_INVALID',
        err.message
          .replaceAll(file, '<rules>')
          .replace('the YARA rule file <rules> does not compile', 'the YARA rules sent do not compile'),
        'fix the rules (`yarac <file> /dev/null` shows the same error); nothing was mounted or scanned',
      );
    throw err;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
