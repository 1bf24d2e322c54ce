// The console matcher and watch: each pattern, the crash-loop threshold (a line
// seen twice is not a loop), and the watch reading its sources until stopped.
// The watch's readers here are functions; test/surebackup/console.test.ts runs
// it against real guests.
import t from 'tap';
import { ConsoleWatch, CRASH_LOOP_MIN, describeFindings, normaliseLine, scanConsole } from '../../src/verify/console.js';
import { address } from '../helpers/subnets.js';

t.test('each pattern is found, with its line', async (t) => {
  const cases: [string, string][] = [
    ['kernel panic', '[    3.547738] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)'],
    ['oops', '[   12.000001] Oops: 0002 [#1] PREEMPT SMP PTI'],
    ['oops', '[   12.000001] BUG: kernel NULL pointer dereference, address: 0000000000000008'],
    ['segfault', '[   40.1] nginx[812]: segfault at 0 ip 000055d0 sp 00007ffd error 4 in nginx[55d0+1000]'],
    ['emergency mode', 'You are in emergency mode. After logging in, type "journalctl -xb" to view'],
    ['maintenance prompt', 'Give root password for maintenance'],
    ['crash loop', 'INIT: Id "c1" respawning too fast: disabled for 5 minutes'],
    ['stop screen', "Your PC ran into a problem and needs to restart. We're just"],
    ['stop screen', '*** STOP: 0x0000007B (0xF78D2524,0xC0000034,0x00000000,0x00000000)'],
  ];
  for (const [kind, line] of cases) {
    const f = scanConsole(`boot ok\n${line}\nlogin:`, 'serial');
    t.same(
      f.map((x) => [x.kind, x.line]),
      [[kind, line.trim()]],
      kind,
    );
  }
  t.same(
    scanConsole('Welcome\nweb login:\nrestorelab-guest: web up, eth0 192.168.77.10/24', 'vga'),
    [],
    'a healthy console has no finding',
  );
  t.same(
    scanConsole('[    0.1] Run /init as init process\n[    0.2] panic=0 on the command line', 'vga'),
    [],
    '"panic" alone is not a kernel panic',
  );
});

t.test('the same normalised failure line three times is a crash loop; twice is not', async (t) => {
  t.equal(CRASH_LOOP_MIN, 3);
  const line = (n: number): string => `[  ${n}.123456] svc[${100 + n}]: fatal: cannot open /var/lib/svc/state (errno ${n})`;
  t.equal(normaliseLine(line(1)), normaliseLine(line(2)), 'timestamps, pids and numbers do not make lines different');
  t.same(scanConsole([line(1), 'ok', line(2)], 'serial'), [], 'twice is not a loop');
  const three = scanConsole([line(1), 'ok', line(2), line(3)], 'serial');
  t.same(
    three.map((f) => [f.kind, f.count]),
    [['crash loop', 3]],
  );
  t.equal(three[0]?.line, line(1).trim());
  t.same(scanConsole(['all good', 'all good', 'all good'], 'serial'), [], 'repeated lines that report no failure are not a loop');
  t.same(scanConsole(['a failed', 'b failed', 'c failed'], 'serial'), [], 'different failures are not a loop');
  t.match(
    describeFindings([...three, ...scanConsole('Kernel panic - not syncing: x', 'vga')]),
    /^kernel panic on the VGA console: "Kernel panic - not syncing: x"; crash loop on the serial console: ".*" \(3 times\)$/,
  );
});

t.test('the watch reads until stopped, keeps the highest count, and hands each finding out once', async (t) => {
  let serial = 'boot\n';
  let vga: string[] = ['login:'];
  let vgaReads = 0;
  const w = new ConsoleWatch(
    {
      vga: async () => {
        vgaReads++;
        return vga;
      },
      serial: async () => serial,
    },
    { intervalMs: 20 },
  ).start();
  const until = async (cond: () => boolean): Promise<void> => {
    const end = Date.now() + 5000;
    while (!cond()) {
      if (Date.now() > end) throw new Error('timed out');
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  await until(() => vgaReads >= 2);
  t.same(w.findings(), []);
  serial += 'x: fatal: no state\nx: fatal: no state\nx: fatal: no state\n';
  await until(() => w.findings().length === 1);
  serial += 'x: fatal: no state\n';
  await until(() => w.findings()[0]?.count === 4);
  t.equal(w.take().length, 1);
  t.same(w.take(), [], 'taken once');
  vga = ['Kernel panic - not syncing: Attempted to kill init!'];
  await w.stop();
  const late = w.take();
  t.same(
    late.map((f) => [f.kind, f.source]),
    [['kernel panic', 'vga']],
    'the last read at stop sees the panic',
  );
  const n = vgaReads;
  await new Promise((r) => setTimeout(r, 100));
  t.equal(vgaReads, n, 'no reads after stop');
});

t.test('a source that keeps failing is given up; an abort stops the watch', async (t) => {
  let reads = 0;
  const ac = new AbortController();
  const w = new ConsoleWatch(
    {
      vga: async () => {
        reads++;
        throw new Error('VM gone');
      },
    },
    { intervalMs: 5, signal: ac.signal },
  ).start();
  const end = Date.now() + 5000;
  while (reads < 5 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 60));
  t.equal(reads, 5, 'five failed reads, then none');
  ac.abort();
  await w.stop();
  t.same(w.findings(), []);
});

t.test('the test runner watches a VM from its first test; what comes after the screenshot is a failed console test', async (t) => {
  const { createTestRunner } = await import('../../src/verify/tests.js');
  const { writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const dir = t.testdir();
  const textMem = (rows: string[]): Uint8Array => {
    const b = new Uint8Array(0x8000);
    for (let i = 0; i < b.length; i += 2) {
      b[i] = 0x20;
      b[i + 1] = 0x07;
    }
    rows.forEach((r, y) =>
      [...r].forEach((c, x) => {
        b[(y * 80 + x) * 2] = c.charCodeAt(0);
      }),
    );
    return b;
  };
  let screen = ['web login:'];
  let serial = 'svc: fatal: no config\nsvc: fatal: no config\n';
  const handle = {
    ip: '192.168.77.10',
    masqIp: address('prod-lab'),
    netns: 'none',
    screendump: async () => {
      const p = join(dir, `s${Date.now()}.ppm`);
      const px = Buffer.alloc(16 * 8 * 3);
      for (let i = 0; i < px.length; i += 7) px[i] = 200;
      writeFileSync(p, Buffer.concat([Buffer.from('P6\n16 8\n255\n'), px]));
      return p;
    },
    consoleText: async () => textMem(screen),
    serialLog: async () => serial,
    stop: async () => undefined,
  };
  const run = createTestRunner({
    repo: async () => {
      throw new Error('unused');
    },
    screenshotDir: dir,
    ocr: false,
    consoleIntervalMs: 20,
  });
  const role = { name: 'custom', tests: [{ kind: 'screenshot' as const }], maxBootSeconds: 10, appInitSeconds: 1 };
  const ac = new AbortController();
  const shot = await run({ kind: 'screenshot' }, { name: 'web', pointId: 'p', role, handle }, ac.signal);
  t.equal(shot.result, 'passed', `twice is not a loop: ${shot.detail}`);
  serial += 'svc: fatal: no config\n';
  screen = ['[   9.1] Kernel panic - not syncing: Attempted to kill init!'];
  const late = await run.vmDone!({ name: 'web', handle }, ac.signal);
  t.equal(late.length, 1);
  t.equal(late[0]?.result, 'failed');
  t.match(
    late[0]?.detail,
    /^kernel panic on the VGA console: "\[ {3}9\.1\] Kernel panic - not syncing: Attempted to kill init!"; crash loop on the serial console: "svc: fatal: no config" \(3 times\)/,
  );
  t.same(await run.vmDone!({ name: 'web', handle }, ac.signal), [], 'once');
});

t.test('a failure line seen twice when the tests end is watched longer, until a third makes it a crash loop', async (t) => {
  const line = 'crashd: fatal: cannot open /var/lib/crashd/state';
  let reads = 0;
  // Twice for the first three reads, then a third time: a loop slower than the VM's tests.
  const serial = async (): Promise<string> => [line, line, ...(++reads > 3 ? [line] : [])].join('\n');
  const quick = new ConsoleWatch({ serial }, { intervalMs: 20 }).start();
  await quick.stop();
  t.same(quick.findings(), [], 'stopped at once, twice is no loop');

  reads = 0;
  const patient = new ConsoleWatch({ serial }, { intervalMs: 20 }).start();
  await patient.stop({ suspectWaitMs: 5000 });
  t.match(patient.findings(), [{ kind: 'crash loop', source: 'serial', count: 3 }], 'watched on until the third');

  const calm = new ConsoleWatch({ serial: async () => 'all good\nstill good' }, { intervalMs: 20 }).start();
  const t0 = Date.now();
  await calm.stop({ suspectWaitMs: 5000 });
  t.ok(Date.now() - t0 < 1000, 'a VM with no repeated failure line is not kept waiting');
});
