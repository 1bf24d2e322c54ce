#!/usr/bin/env node
// Runs the built test files (dist/) in the pools of test/pools.json, as
// test/helpers/pools.ts describes: stages one after the other, the pools (or
// lanes of pools) of a stage at the same time, each running N of its files at once, each file as
// its own `node FILE` (runFile says why not `tap run`).
//
// A pool may name a `setup` command, run (sh -c, from the checkout) before
// its files, and a `teardown` run after them whatever their verdicts, and an
// `env` its files (and those commands) see; `{root}` in an env value is the
// checkout's path. A setup that fails fails the pool without running its
// files. Their output is kept in var/test-logs/<pool>.setup.log.
//
// Prints each file's verdict and time as it ends, the TAP of any file that
// failed, and at the end tap's summary line summed over the pools,
// `# { total: N, pass: N, fail: N }` (.ci/run reads it). Each pool's full TAP
// is kept in var/test-logs/<pool>.tap, and the time of every file in
// var/test-logs/timing.json.
//
//   --shuffle        each pool's files in random order (to prove no file depends on another's order)
//   --pool NAME      only this pool (repeatable)
//   --file NAME      only this file, in its pool (repeatable; NAME as in pools.json, e.g. lab/lab)
//   --jobs POOL=N    run POOL with N jobs instead of its pools.json value
//   --list           print the plan and exit
//   --save-durations write this run's file times into test/durations.json
//
// Within a pool the files run longest first, by the times in
// test/durations.json (a file not there goes first), so that the pool does
// not end with one long file running alone; --save-durations refreshes it.
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const { loadPools, poolProblems, testFiles, compiled } = await import(join(root, 'dist', 'test', 'helpers', 'pools.js'));

function usage(msg) {
  process.stderr.write(
    `run-pools: ${msg}\nusage: scripts/test [--shuffle] [--pool NAME]... [--file NAME]... [--jobs POOL=N]... [--list] [--save-durations]\n`,
  );
  process.exit(2);
}

const opts = { shuffle: false, only: [], files: [], jobs: {}, list: false, saveDurations: false };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--shuffle') opts.shuffle = true;
  else if (a === '--list') opts.list = true;
  else if (a === '--save-durations') opts.saveDurations = true;
  else if (a === '--pool') opts.only.push(argv[++i] ?? usage('--pool needs a pool name'));
  else if (a === '--file') opts.files.push(argv[++i] ?? usage('--file needs a test file name'));
  else if (a === '--jobs') {
    const m = /^([\w-]+)=(\d+)$/.exec(argv[++i] ?? '');
    if (!m || Number(m[2]) < 1) usage('--jobs wants POOL=N with N ≥ 1');
    opts.jobs[m[1]] = Number(m[2]);
  } else usage(`unknown argument ${a}`);
}

const pools = loadPools();
const problems = poolProblems(pools, testFiles());
if (problems.length) {
  for (const p of problems) process.stderr.write(`run-pools: ${p}\n`);
  process.exit(1);
}
for (const name of [...opts.only, ...Object.keys(opts.jobs)])
  if (!(name in pools.pools)) usage(`no pool named ${name}; pools: ${Object.keys(pools.pools).join(', ')}`);

const listed = Object.values(pools.pools).flatMap((p) => p.files);
for (const f of opts.files) if (!listed.includes(f)) usage(`no test file ${f} in test/pools.json (names look like lab/lab)`);
if (opts.files.length) for (const p of Object.values(pools.pools)) p.files = p.files.filter((f) => opts.files.includes(f));
const chosen = (name) => (opts.only.length === 0 || opts.only.includes(name)) && pools.pools[name].files.length > 0;
// A stage entry is a pool, or a lane: pools run one after the other, beside the stage's other entries.
const stages = pools.stages
  .map((s) => s.map((entry) => (Array.isArray(entry) ? entry : [entry]).filter(chosen)).filter((lane) => lane.length > 0))
  .filter((s) => s.length > 0);
const jobsOf = (name) => opts.jobs[name] ?? pools.pools[name].jobs;
const durationsFile = join(root, 'test', 'durations.json');
/** Seconds per file (pools.json names) from an earlier run: only the order of the files depends on them. */
const durations = existsSync(durationsFile) ? JSON.parse(readFileSync(durationsFile, 'utf8')).seconds : {};

if (opts.list) {
  stages.forEach((s, i) => {
    for (const [name, before] of s.flatMap((lane) => lane.map((name, j) => [name, lane[j - 1]]))) {
      const p = pools.pools[name];
      const around = [before && `after ${before}`, p.setup && `setup: ${p.setup}`, p.teardown && `teardown: ${p.teardown}`]
        .filter(Boolean)
        .join('; ');
      console.log(`stage ${i + 1} pool ${name} (${jobsOf(name)} jobs${around ? `; ${around}` : ''}): ${ordered(p.files).join(' ')}`);
    }
  });
  process.exit(0);
}

const logDir = join(root, 'var', 'test-logs');
mkdirSync(logDir, { recursive: true });
const secs = (ms) => (ms / 1000).toFixed(1);

/** The environment of a pool's files and commands: ours plus its `env`. */
function poolEnv(pool) {
  const extra = Object.fromEntries(Object.entries(pool.env ?? {}).map(([k, v]) => [k, v.replaceAll('{root}', root.replace(/\/$/, ''))]));
  return { ...process.env, ...extra };
}

/** Runs a pool's setup or teardown command; resolves to its exit code, its output appended to the pool's setup log. */
function poolCommand(name, which) {
  const cmd = pools.pools[name][which];
  console.log(`[${name}] ${which}: ${cmd}`);
  const started = Date.now();
  const log = createWriteStream(join(logDir, `${name}.setup.log`), { flags: which === 'setup' ? 'w' : 'a' });
  log.write(`$ ${cmd}\n`);
  const child = spawn('sh', ['-c', cmd], { cwd: root, env: poolEnv(pools.pools[name]), stdio: ['ignore', 'pipe', 'pipe'] });
  const tail = [];
  const keep = (chunk) => {
    log.write(chunk);
    tail.push(...chunk.toString().split('\n').filter(Boolean));
    tail.splice(0, Math.max(0, tail.length - 20));
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      log.end();
      const rc = code ?? 1;
      console.log(`[${name}] ${which} ${rc === 0 ? 'done' : `FAILED (exit ${code ?? signal})`} in ${secs(Date.now() - started)} s`);
      if (rc !== 0) console.log(tail.map((l) => `[${name}] | ${l}`).join('\n'));
      resolve(rc);
    });
  });
}

/** A pool with its setup and teardown around it. */
async function runPoolWithSetup(name) {
  const pool = pools.pools[name];
  if (pool.setup && (await poolCommand(name, 'setup')) !== 0) {
    // Its files would each fail on the missing service; one failure says it once.
    if (pool.teardown) await poolCommand(name, 'teardown');
    return { name, code: 1, counts: { total: 1, fail: 1 }, times: {}, seconds: 0 };
  }
  const result = await runPool(name);
  if (pool.teardown && (await poolCommand(name, 'teardown')) !== 0) {
    result.code = result.code || 1;
    result.counts.fail = (result.counts.fail ?? 0) + 1;
    result.counts.total = (result.counts.total ?? 0) + 1;
  }
  return result;
}

/**
 * Each test file runs as `node FILE`, not under `tap run`. tap's runner
 * loads @tapjs/processinfo into every node process a test starts (it puts
 * itself in NODE_OPTIONS and re-adds itself on every spawn), which costs
 * about 0.25 s of CPU per CLI call: a CLI-heavy file took twice the CPU
 * under the runner (docs/testing.md). The file's own tap prints TAP on
 * stdout, its counts (`# { total: N, pass: N, ... }`) and sets a non-zero
 * exit code when anything failed; TAP_TIMEOUT bounds it as the runner would.
 */
const tapConfig = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).tap ?? {};
const timeoutSeconds = Number(tapConfig.timeout ?? 30);
// t.mockImport needs tap's loader in the test process itself (not in its children).
const nodeArgs = ['--enable-source-maps', `--import=${import.meta.resolve('@tapjs/mock/import')}`];
const running = new Set();

/** Files longest first (by test/durations.json), so that no long file starts last and runs alone. */
function ordered(files) {
  if (opts.shuffle)
    return files
      .map((f) => [Math.random(), f])
      .sort((a, b) => a[0] - b[0])
      .map(([, f]) => f);
  const known = Object.values(durations);
  // A file with no recorded time may be long: it goes first, as if it were the longest.
  const unknown = known.length ? Math.max(...known) + 1 : 0;
  const expected = (f) => durations[f] ?? unknown;
  return [...files].sort((a, b) => expected(b) - expected(a) || a.localeCompare(b));
}

/** Runs one compiled test file; resolves to its counts, verdict, time and TAP. */
function runFile(file, env) {
  const started = Date.now();
  // Its own process group, so that a file killed on time takes the processes it started with it.
  const child = spawn(process.execPath, [...nodeArgs, file], {
    cwd: root,
    env: { ...env, TAP_TIMEOUT: String(timeoutSeconds) },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  running.add(child);
  const lines = [];
  const counts = {};
  let overtime = false;
  // tap's own timeout fails the file first; this catches a process that does not exit after it.
  const killer = setTimeout(
    () => {
      overtime = true;
      killGroup(child);
    },
    (timeoutSeconds + 60) * 1000,
  );
  createInterface({ input: child.stdout }).on('line', (line) => {
    lines.push(line);
    const summary = /^# \{ (.*) \}$/.exec(line);
    if (summary) for (const [, k, n] of summary[1].matchAll(/(\w+): (\d+)/g)) counts[k] = Number(n);
  });
  createInterface({ input: child.stderr }).on('line', (l) => lines.push(`# stderr: ${l}`));
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(killer);
      running.delete(child);
      const seconds = (Date.now() - started) / 1000;
      const problem =
        (overtime && `killed after ${timeoutSeconds + 60} s`) ||
        (signal && `ended by ${signal}`) ||
        (counts.total === undefined && `exited ${code} without tap's summary`) ||
        (code !== 0 && (counts.fail ?? 0) === 0 && `exited ${code}`);
      // A file that died or printed no summary counts as one failure, so the totals never hide it.
      if (problem) {
        lines.push(`# run-pools: ${file} ${problem}`);
        counts.total = (counts.total ?? 0) + 1;
        counts.fail = (counts.fail ?? 0) + 1;
      }
      resolve({ ok: !problem && code === 0 && (counts.fail ?? 0) === 0, counts, seconds, lines });
    });
  });
}

function killGroup(child) {
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
for (const sig of ['SIGINT', 'SIGTERM'])
  process.on(sig, () => {
    for (const c of running) killGroup(c);
    process.exit(130);
  });

/** A pool's files, `jobs` at a time; resolves to its summed counts, exit code and per-file times. */
async function runPool(name) {
  const pool = pools.pools[name];
  const jobs = jobsOf(name);
  console.log(`[${name}] ${pool.files.length} files, ${jobs} at a time${opts.shuffle ? ', shuffled' : ', longest first'}`);
  const started = Date.now();
  const log = createWriteStream(join(logDir, `${name}.tap`));
  const env = poolEnv(pool);
  const queue = ordered(pool.files).map(compiled);
  const times = {};
  const counts = {};
  let failed = 0;
  const lane = async () => {
    for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
      const r = await runFile(file, env);
      times[file] = r.seconds;
      for (const [k, n] of Object.entries(r.counts)) counts[k] = (counts[k] ?? 0) + n;
      log.write(
        `# Subtest: ${file}\n${r.lines.map((l) => `    ${l}`).join('\n')}\n${r.ok ? 'ok' : 'not ok'} - ${file} # time=${r.seconds * 1000}ms\n`,
      );
      console.log(`[${name}] ${r.ok ? 'ok' : 'not ok'} ${file} (${r.seconds.toFixed(1)} s)`);
      if (!r.ok) {
        failed++;
        console.log(
          r.lines
            .slice(-5000)
            .map((l) => `[${name}] | ${l}`)
            .join('\n'),
        );
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, queue.length) }, lane));
  log.end();
  const seconds = (Date.now() - started) / 1000;
  console.log(`[${name}] done in ${seconds.toFixed(0)} s, ${failed} of ${pool.files.length} files failed`);
  return { name, code: failed ? 1 : 0, counts, times, seconds };
}

const t0 = Date.now();
const results = [];
async function runLane(lane) {
  const out = [];
  for (const name of lane) out.push(await runPoolWithSetup(name));
  return out;
}
for (const stage of stages) results.push(...(await Promise.all(stage.map(runLane))).flat());

const total = {};
for (const r of results) for (const [k, n] of Object.entries(r.counts)) total[k] = (total[k] ?? 0) + n;
const timing = Object.fromEntries(results.flatMap((r) => Object.entries(r.times).map(([f, s]) => [f, { pool: r.name, seconds: s }])));
writeFileSync(
  join(logDir, 'timing.json'),
  `${JSON.stringify({ wallSeconds: (Date.now() - t0) / 1000, pools: Object.fromEntries(results.map((r) => [r.name, r.seconds])), files: timing }, null, 2)}\n`,
);
if (opts.saveDurations) {
  const name = (compiledFile) => compiledFile.replace(/^dist\/test\//, '').replace(/\.test\.js$/, '');
  const seconds = { ...durations };
  for (const [f, v] of Object.entries(timing)) seconds[name(f)] = Math.round(v.seconds * 10) / 10;
  for (const f of Object.keys(seconds)) if (!listed.includes(f)) delete seconds[f];
  const sorted = Object.fromEntries(Object.entries(seconds).sort(([a], [b]) => a.localeCompare(b)));
  const $comment =
    "Wall seconds per test file from a whole run (scripts/run-pools.mjs --save-durations); only the order of each pool's files depends on them.";
  writeFileSync(durationsFile, `${JSON.stringify({ $comment, seconds: sorted }, null, 2)}\n`);
  console.log(`run-pools: wrote ${Object.keys(sorted).length} file times to test/durations.json`);
}
const slowest = Object.entries(timing)
  .filter(([, v]) => v.seconds !== null)
  .sort((a, b) => b[1].seconds - a[1].seconds)
  .slice(0, 10);
console.log(`slowest files: ${slowest.map(([f, v]) => `${f.replace(/^dist\/test\//, '')} ${v.seconds.toFixed(0)} s`).join(', ')}`);
console.log(
  `pools: ${results.map((r) => `${r.name} ${r.seconds.toFixed(0)} s`).join(', ')}; all ${((Date.now() - t0) / 1000).toFixed(0)} s`,
);
const failedPools = results.filter((r) => r.code !== 0 || (r.counts.fail ?? 0) > 0 || r.counts.total === undefined);
const extra = Object.entries(total)
  .filter(([k]) => !['total', 'pass', 'fail'].includes(k))
  .map(([k, n]) => `, ${k}: ${n}`)
  .join('');
console.log(`# { total: ${total.total ?? 0}, pass: ${total.pass ?? 0}, fail: ${total.fail ?? 0}${extra} }`);
if (failedPools.length)
  console.log(`run-pools: failed in ${failedPools.map((r) => r.name).join(', ')}; full TAP in var/test-logs/<pool>.tap`);
process.exit(failedPools.length ? 1 : 0);
