import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../../bin/restorelab.js', import.meta.url));

t.test('restorelab doctor --json prints one object with the probe findings', async (t) => {
  const r = spawnSync(process.execPath, [bin, 'doctor', '--json', '--force'], { encoding: 'utf8', timeout: 120_000 });
  const report = JSON.parse(r.stdout) as { ok: boolean; accel: string; kvm: string; checks: { name: string; ok: boolean }[] };
  t.ok(['kvm', 'tcg'].includes(report.accel), 'reports an accelerator');
  const names = report.checks.map((c) => c.name);
  for (const n of ['qemu-system-x86_64', 'accel', 'fuse', 'loop', 'libvirtd', 'nfs-ls', 'netns']) t.ok(names.includes(n), `checks ${n}`);
  // CI installs everything scripts/setup names, so the host must be fit.
  t.equal(report.ok, true, 'host is fit for the main job');
  t.equal(r.status, 0);
  t.equal(report.checks.find((c) => c.name === 'netns')?.ok, true, 'network namespaces work');
  t.equal(report.checks.find((c) => c.name === 'mount-propagation')?.ok, true, 'scripts/setup made the root mount shared');
});

t.test('an invalid config file makes config check fail with exit 2 and a JSON error', async (t) => {
  const r = spawnSync(process.execPath, [bin, 'config', 'check', '/nonexistent/restorelab.json', '--json'], { encoding: 'utf8' });
  t.equal(r.status, 2);
  const out = JSON.parse(r.stdout) as { ok: boolean; error: { code: string } };
  t.equal(out.ok, false);
  t.equal(out.error.code, 'FILE_UNREADABLE');
});

t.test('an unknown command is a usage error', async (t) => {
  const r = spawnSync(process.execPath, [bin, 'frobnicate'], { encoding: 'utf8' });
  t.equal(r.status, 2);
  t.match(r.stderr, /unknown command/);
});
