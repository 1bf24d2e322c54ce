#!/usr/bin/env node
// Runs the built test files (dist/) in the pools of test/pools.json, as
// test/helpers/pools.ts describes: stages one after the other, the pools of a
// stage at the same time, each a `tap run --jobs N` of its files.
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
//   --shuffle        tap's --shuffle: each pool's files in random order
//   --pool NAME      only this pool (repeatable)
//   --file NAME      only this file, in its pool (repeatable; NAME as in pools.json, e.g. lab/lab)
//   --jobs POOL=N    run POOL with N jobs instead of its pools.json value
//   --list           print the plan and exit
import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const { loadPools, poolProblems, testFiles, compiled } = await import(join(root, 'dist', 'test', 'helpers', 'pools.js'));

function usage(msg) {
  process.stderr.write(
    `run-pools: ${msg}\nusage: scripts/test [--shuffle] [--pool NAME]... [--file NAME]... [--jobs POOL=N]... [--list]\n`,
  );
  process.exit(2);
}

const opts = { shuffle: false, only: [], files: [], jobs: {}, list: false };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--shuffle') opts.shuffle = true;
  else if (a === '--list') opts.list = true;
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
const stages = pools.stages.map((s) => s.filter(chosen)).filter((s) => s.length > 0);
const jobsOf = (name) => opts.jobs[name] ?? pools.pools[name].jobs;

if (opts.list) {
  stages.forEach((s, i) => {
    for (const name of s) {
      const p = pools.pools[name];
      const around = [p.setup && `setup: ${p.setup}`, p.teardown && `teardown: ${p.teardown}`].filter(Boolean).join('; ');
      console.log(`stage ${i + 1} pool ${name} (${jobsOf(name)} jobs${around ? `; ${around}` : ''}): ${p.files.join(' ')}`);
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

/** One `tap run` of a pool; resolves to its counts, exit code and per-file times. */
function runPool(name) {
  const pool = pools.pools[name];
  const args = ['run', '--jobs', String(jobsOf(name)), '-R', 'tap', ...(opts.shuffle ? ['--shuffle'] : []), ...pool.files.map(compiled)];
  console.log(`[${name}] ${pool.files.length} files, ${jobsOf(name)} at a time${opts.shuffle ? ', shuffled' : ''}`);
  const started = Date.now();
  const log = createWriteStream(join(logDir, `${name}.tap`));
  const child = spawn(join(root, 'node_modules', '.bin', 'tap'), args, {
    cwd: root,
    env: poolEnv(pool),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const times = {};
  const counts = {};
  let block = [];
  createInterface({ input: child.stderr }).on('line', (l) => log.write(`# stderr: ${l}\n`));
  createInterface({ input: child.stdout }).on('line', (line) => {
    log.write(`${line}\n`);
    // Top-level lines only: a file's subtest starts with "# Subtest: <file>" and ends with its ok/not ok.
    if (line.startsWith('# Subtest: ')) block = [line];
    else if (block.length && block.length < 5000) block.push(line);
    const verdict = /^(not ok|ok) \d+ - (\S+)(?: # time=([\d.]+)ms)?/.exec(line);
    if (verdict) {
      const [, v, file, ms] = verdict;
      times[file] = ms === undefined ? null : Number(ms) / 1000;
      console.log(`[${name}] ${v} ${file}${ms === undefined ? '' : ` (${secs(Number(ms))} s)`}`);
      if (v === 'not ok') console.log(block.map((l) => `[${name}] | ${l}`).join('\n'));
      block = [];
    }
    const summary = /^# \{ (.*) \}$/.exec(line);
    if (summary) for (const [, k, n] of summary[1].matchAll(/(\w+): (\d+)/g)) counts[k] = (counts[k] ?? 0) + Number(n);
  });
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      log.end();
      const seconds = (Date.now() - started) / 1000;
      console.log(`[${name}] done in ${seconds.toFixed(0)} s, tap exit ${code ?? signal}`);
      resolve({ name, code: code ?? 1, counts, times, seconds });
    });
  });
}

const t0 = Date.now();
const results = [];
for (const stage of stages) results.push(...(await Promise.all(stage.map(runPoolWithSetup))));

const total = {};
for (const r of results) for (const [k, n] of Object.entries(r.counts)) total[k] = (total[k] ?? 0) + n;
const timing = Object.fromEntries(results.flatMap((r) => Object.entries(r.times).map(([f, s]) => [f, { pool: r.name, seconds: s }])));
writeFileSync(
  join(logDir, 'timing.json'),
  `${JSON.stringify({ wallSeconds: (Date.now() - t0) / 1000, pools: Object.fromEntries(results.map((r) => [r.name, r.seconds])), files: timing }, null, 2)}\n`,
);
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
