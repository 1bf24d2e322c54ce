// The console watch against real guests under TCG, through `surebackup run`:
// crash-loop (a service init respawns, printing the same fatal line every 2 s,
// on serial) and vga-panic (a kernel panic on the VGA screen only: its kernel
// has no serial console). Both fail their screenshot test with the line quoted.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { isBlank } from '../../src/verify/screenshot.js';
import { cli, shortDir, guestRepository, labFile, leftovers } from './fixtures/guest-lab.js';
import { subnet } from '../helpers/subnets.js';

interface Rep {
  result: string;
  report: string;
  vms: {
    name: string;
    result: string;
    screenshot: string | null;
    tests: { name: string; kind: string; result: string; detail: string }[];
  }[];
}

t.test('a crash loop on serial and a panic shown only on the VGA console are each caught and quoted', async (t) => {
  const dir = shortDir(t);
  const stateDir = join(dir, 'state');
  const { repo } = await guestRepository(dir, ['crash-loop', 'vga-panic']);
  const labName = `sbc${process.pid % 10000}`;
  const jobFile = join(dir, 'console.json');
  writeFileSync(
    jobFile,
    JSON.stringify({
      name: 'console',
      lab: labFile(dir, labName, subnet('surebackup/console')),
      concurrency: 2,
      verify: {
        vms: ['crash-loop', 'vga-panic'],
        role: 'web',
        maxBootSeconds: 150,
        appInitSeconds: 15,
        overrides: { 'vga-panic': { maxBootSeconds: 40 } },
      },
    }),
  );
  const r = await cli(['surebackup', 'run', jobFile, '--repo', repo, '--json'], stateDir);
  t.equal(r.code, 3, `exit 3 when verification failed; stderr: ${r.stderr.slice(-800)}`);
  const rep = JSON.parse(r.stdout) as Rep;
  const vm = (n: string) => rep.vms.find((v) => v.name === n)!;
  const test = (n: string, name: string) => vm(n).tests.find((x) => x.name === name)!;
  const show = (n: string): string =>
    vm(n)
      .tests.map((x) => `${x.name}=${x.result} ${x.detail}`)
      .join(' | ');

  t.equal(vm('crash-loop').result, 'failed', show('crash-loop'));
  for (const k of ['heartbeat', 'ping', 'tcp:80', 'http:80/', 'integrity'])
    t.equal(test('crash-loop', k).result, 'passed', `crash-loop ${k}: the VM works, but its console does not`);
  // The watch fails the screenshot test; a third fatal line that arrives only
  // after the screenshot was taken (a loaded host) fails a `console` test instead.
  const loop = vm('crash-loop').tests.find((x) => (x.name === 'screenshot' || x.name === 'console') && x.result === 'failed');
  t.ok(loop, `the screenshot or console test failed: ${show('crash-loop')}`);
  if (!loop) return;
  t.match(
    loop.detail,
    /^crash loop on the serial console: "crashd: fatal: cannot open \/var\/lib\/crashd\/state: No such file or directory" \((\d+) times\)/,
  );
  t.ok(Number(/\((\d+) times\)/.exec(loop.detail)?.[1]) >= 3, 'seen at least three times');

  t.equal(vm('vga-panic').result, 'failed', show('vga-panic'));
  t.equal(test('vga-panic', 'heartbeat').result, 'failed');
  const panic = test('vga-panic', 'screenshot');
  t.equal(panic.result, 'failed');
  t.match(panic.detail, /^kernel panic on the VGA console: "\[ *\d+\.\d+\] Kernel panic - not syncing: VFS: Unable to mount root fs/);
  t.notMatch(panic.detail, /serial console/, 'nothing about it on serial: the VGA console alone told');
  t.ok(vm('vga-panic').screenshot, 'the panic screen is kept');
  // The screen shows the panic, so it is not blank: only the panic detector can have failed it.
  const png = decode(readFileSync(vm('vga-panic').screenshot!));
  const rgb = new Uint8Array(png.width * png.height * 3);
  for (let i = 0; i < png.width * png.height; i++) for (let c = 0; c < 3; c++) rgb[i * 3 + c] = png.data[i * png.channels + c]!;
  t.equal(
    isBlank({ width: png.width, height: png.height, rgb }),
    false,
    'the panic screen is not blank: the blank-screen check would pass it',
  );
  const html = readFileSync(rep.report, 'utf8');
  t.match(html, /flagged: kernel panic on the VGA console: &quot;\[ *\d+\.\d+\] Kernel panic - not syncing/);
  t.match(html, /flagged: crash loop on the serial console/);
  t.same(await leftovers(stateDir, undefined, labName), []);
});
