/**
 * processAlive, with real processes: a running child is alive; an exited one,
 * a zombie nobody reaped yet and a pid that never existed are not; a process of
 * another user (kill gives EPERM) is alive.
 */
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { which } from '../../src/host/exec.js';
import { processAlive, processState } from '../../src/host/process.js';

t.test('a live child is alive, and dead once it exits and is reaped', async (t) => {
  t.ok(processAlive(process.pid), 'this process is alive');
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  const pid = child.pid as number;
  t.ok(processAlive(pid), 'a sleeping child is alive');
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  await new Promise((r) => setTimeout(r, 50));
  t.notOk(processAlive(pid), 'a killed and reaped child is not alive');
});

t.test('a zombie is dead', async (t) => {
  // A child that exits while this process does not wait for it stays a zombie until Node reaps it on
  // the next turn of the loop; sleep synchronously so it is observed in that state.
  const child = spawn('sh', ['-c', 'exit 0']);
  const pid = child.pid as number;
  const until = Date.now() + 2000;
  let zombie = false;
  while (Date.now() < until && !zombie) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    zombie = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  }
  t.ok(zombie, 'the child became a zombie');
  t.equal(processState(pid), 'Z', 'processState reads the zombie state');
  t.notOk(processAlive(pid), 'a zombie is not alive');
  await new Promise((r) => child.once('exit', r));
  await new Promise((r) => setTimeout(r, 50));
  t.notOk(processAlive(pid), 'a reaped process is not alive');
  t.equal(processState(pid), undefined, 'a reaped process has no state');
});

t.test('a dead or impossible pid is not alive', async (t) => {
  const max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  // pid_max itself is never handed out (pids run below it): ESRCH.
  t.notOk(processAlive(max), 'a pid that cannot exist (ESRCH)');
  t.notOk(processAlive(undefined), 'no pid');
  t.notOk(processAlive(0), 'pid 0 (would signal the process group)');
  t.notOk(processAlive(-1), 'a negative pid (would signal every process)');
});

t.test('a process of another user is alive (EPERM)', async (t) => {
  const setpriv = which('setpriv');
  if (!setpriv) throw new Error('setpriv is missing: install util-linux (apt-get install util-linux)');
  // As nobody, kill(1, 0) fails with EPERM: init exists but is not ours to signal.
  const module = fileURLToPath(new URL('../../src/host/process.js', import.meta.url));
  const script = `import(${JSON.stringify(module)}).then((m) => {
    let code = 'ok'; try { process.kill(1, 0); } catch (e) { code = e.code; }
    process.stdout.write(JSON.stringify({ code, alive: m.processAlive(1) }));
  });`;
  const r = await promisify(execFile)(setpriv, ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script], {
    encoding: 'utf8',
    cwd: '/',
    timeout: 30_000,
  });
  const seen = JSON.parse(r.stdout) as { code: string; alive: boolean };
  t.equal(seen.code, 'EPERM', 'kill(1, 0) as nobody is refused');
  t.equal(seen.alive, true, 'and processAlive counts it alive');
});
