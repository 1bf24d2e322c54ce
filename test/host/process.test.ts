/** processAlive: a running process is alive; an exited one, and a zombie nobody reaped yet, are not. */
import t from 'tap';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { processAlive } from '../../src/host/process.js';

t.test('running, zombie and gone', async (t) => {
  t.ok(processAlive(process.pid), 'this process is alive');
  t.notOk(processAlive(undefined), 'no pid is not alive');
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
  t.notOk(processAlive(pid), 'a zombie is not alive');
  await new Promise((r) => child.once('exit', r));
  await new Promise((r) => setTimeout(r, 50));
  t.notOk(processAlive(pid), 'a reaped process is not alive');
});
