/**
 * The layers of src/, lowest first, and the check that imports flow down
 * them (test/suite/layers.test.ts). Data flows one way: a source image is
 * backed up into the repository, published as a disk through a datastore
 * and its NFS/FUSE frontends, booted by a hypervisor inside a lab, verified,
 * run as jobs, and served by the API and the CLI. A module may import its
 * own layer's and lower layers' modules, never a higher layer's; modules of
 * one layer may import each other, but never in a circle. No two files
 * import each other in a circle either, inside a folder or across.
 *
 * A *unit* is a top-level folder of src/ (or a top-level file), or a
 * subfolder the table names on its own (backup/jobs runs at the jobs layer,
 * while the backup engine beside it sits just above the repository).
 */
import ts from 'typescript';
import { posix } from 'node:path';

export interface Layer {
  units: string[];
  why: string;
}

/** Lowest first. Every unit of src/ is in exactly one layer. */
export const LAYERS: Layer[] = [
  {
    units: ['errors.ts', 'errors', 'paths.ts', 'settle.ts', 'telemetry', 'schema', 'format'],
    why: 'foundation: error codes, the package root, polling waits, counters, JSON-schema validation, output for people and scripts',
  },
  {
    units: ['host', 'vm'],
    why: 'host plumbing (exec, processes, namespaces, users, accelerator) and the VM definition every layer above describes a VM with',
  },
  { units: ['nbd'], why: 'the NBD wire client that reads live and image sources' },
  { units: ['ingest'], why: 'backup sources: raw files, qemu-img images, NBD exports' },
  { units: ['repo'], why: 'the repository: chunks, indexes, restore points, verify/prune/gc' },
  {
    units: ['formats.ts'],
    why: "the format registry: the repository's formats and those of the overlay and NFS file handles, in one list",
  },
  { units: ['catalog'], why: "the SQLite catalog that indexes repositories and holds the job areas' tables" },
  {
    units: ['backup', 'disk', 'overlay'],
    why: 'the backup engine (source → repository), the published disk (repository → random reads) and its copy-on-write overlay',
  },
  { units: ['datastore'], why: 'the files a hypervisor sees for a published point (vmdk/vmx, scratch space)' },
  { units: ['nfs', 'fuse'], why: 'the frontends that serve a datastore' },
  { units: ['nbd-server'], why: "the NBD frontend: a datastore's disk files as NBD exports, on the NBD client's wire code" },
  { units: ['publish', 'config'], why: "publishing a point over a frontend; the server configuration (which names the frontends' limits)" },
  { units: ['fsread'], why: 'filesystems read in-process from a byte source (ext2/3/4): no kernel, no mount' },
  { units: ['flr'], why: 'file-level restore: partitions and filesystems of a published disk' },
  { units: ['scan'], why: "YARA scans of a point's files, through file-level restore" },
  {
    units: ['hypervisor', 'backup/live'],
    why: 'the QEMU and libvirt drivers; live backup of a running VM, which talks QMP and the guest agent',
  },
  { units: ['lab'], why: 'virtual labs: namespaces, bridges, masquerade' },
  { units: ['verify'], why: 'the tests a recovered VM must pass (heartbeat, network, script, screenshot, integrity)' },
  { units: ['bringup'], why: 'one VM published, booted in a lab and heartbeat-checked' },
  { units: ['session'], why: 'instant recovery sessions: bring-up kept running, migration, recovery' },
  { units: ['report'], why: 'run reports (JSON, HTML) and notifications' },
  { units: ['surebackup'], why: 'SureBackup jobs: application groups, roles, the runner and its history' },
  { units: ['scheduler'], why: 'the SureBackup scheduler: cron and after-backup triggers' },
  { units: ['backup/jobs'], why: 'backup jobs: scheduled backups that can fire SureBackup jobs' },
  { units: ['reconcile'], why: 'start-up reconciliation of publications, sessions and labs left behind' },
  { units: ['workers'], why: 'lab workers: the verification queue in PostgreSQL (pg-boss), the worker registry, tasks run on many hosts' },
  { units: ['api'], why: 'the HTTP API server' },
  { units: ['demo'], why: 'the guided end-to-end demo' },
  { units: ['cli'], why: 'the command line' },
];

/** One import of one file: the specifier as written, and the src-relative file it names. */
export interface Import {
  from: string;
  specifier: string;
  target: string;
}

/**
 * Relative imports of a TypeScript source: static `import … from`,
 * `export … from` (type-only ones too) and `import('…')` with a literal.
 * Packages and node: builtins are not ours and are left out.
 */
export function importsOf(file: string, text: string): Import[] {
  const info = ts.preProcessFile(text, true, true);
  return info.importedFiles
    .filter((i) => i.fileName.startsWith('./') || i.fileName.startsWith('../'))
    .map((i) => ({ from: file, specifier: i.fileName, target: posix.join(posix.dirname(file), i.fileName).replace(/\.js$/, '.ts') }));
}

/** The unit of a src-relative path: the longest unit the table names that holds it. */
export function unitOf(file: string, units: readonly string[]): string | undefined {
  return units.filter((u) => file === u || file.startsWith(`${u}/`)).sort((a, b) => b.length - a.length)[0];
}

/** Strongly connected components with more than one member (Tarjan), each in a stable order. */
export function cycles(graph: ReadonlyMap<string, ReadonlySet<string>>): string[][] {
  const index = new Map<string, number>(),
    low = new Map<string, number>(),
    stack: string[] = [],
    onStack = new Set<string>();
  const out: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next);
    next++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const c: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1) out.push(c.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);
  return out.sort((a, b) => a[0]!.localeCompare(b[0]!));
}

/**
 * Every way `files` (src-relative path → source text) break the layers:
 * a unit in no layer or in two, a layer naming a unit that does not exist,
 * an import of a file that does not exist, an import up the layers, and a
 * circle between units or between files. Each problem names file and import.
 */
export function layerProblems(files: ReadonlyMap<string, string>, layers: readonly Layer[] = LAYERS): string[] {
  const problems: string[] = [];
  const rank = new Map<string, number>();
  layers.forEach((l, i) =>
    l.units.forEach((u) => {
      if (rank.has(u)) problems.push(`${u} is in two layers: ${rank.get(u)} and ${i}`);
      rank.set(u, i);
    }),
  );
  const units = [...rank.keys()];
  for (const u of units)
    if (![...files.keys()].some((f) => unitOf(f, [u]) === u)) problems.push(`the layer table names ${u}, but src/${u} holds no source`);

  const fileGraph = new Map<string, Set<string>>(),
    unitGraph = new Map<string, Set<string>>();
  const example = new Map<string, Import>();
  for (const [file, text] of [...files].sort(([a], [b]) => a.localeCompare(b))) {
    fileGraph.set(file, new Set());
    const from = unitOf(file, units);
    if (from === undefined) {
      problems.push(`src/${file} is in no layer: add its folder to LAYERS in test/helpers/layers.ts`);
      continue;
    }
    unitGraph.set(from, unitGraph.get(from) ?? new Set());
    for (const imp of importsOf(file, text)) {
      if (!files.has(imp.target)) {
        problems.push(`src/${file} imports '${imp.specifier}', which is no source file (src/${imp.target})`);
        continue;
      }
      fileGraph.get(file)!.add(imp.target);
      const to = unitOf(imp.target, units);
      if (to === undefined || to === from) continue;
      unitGraph.get(from)!.add(to);
      if (!example.has(`${from}→${to}`)) example.set(`${from}→${to}`, imp);
      if (rank.get(to)! > rank.get(from)!) {
        problems.push(
          `src/${file} imports '${imp.specifier}': ${from} (layer ${rank.get(from)}) may not import ${to} (layer ${rank.get(to)}, above it)`,
        );
      }
    }
  }
  for (const c of cycles(unitGraph)) {
    // The imports that close the circle: those that do not run down a layer.
    const edges = [...example]
      .filter(([k]) => {
        const [a, b] = k.split('→') as [string, string];
        return c.includes(a) && c.includes(b) && rank.get(b)! >= rank.get(a)!;
      })
      .map(([, i]) => `src/${i.from} imports '${i.specifier}'`);
    problems.push(`a circle between ${c.join(', ')}: ${edges.join('; ')}`);
  }
  for (const c of cycles(fileGraph)) problems.push(`a circle between files: ${c.map((f) => `src/${f}`).join(', ')}`);
  // A file that imports one module twice (a type statically, the code lazily) is named once.
  return [...new Set(problems)];
}
