import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, syncLevelOption } from '../../src/config/config.js';
import { RestorelabError } from '../../src/errors.js';
import { assertValid } from '../../src/schema/validate.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-config-'));

function write(name: string, body: string): string {
  const p = join(dir, name);
  writeFileSync(p, body);
  return p;
}

t.test('defaults load and resolve paths against RESTORELAB_HOME', async (t) => {
  const cfg = loadConfig({ env: { RESTORELAB_HOME: '/srv/rl' } });
  t.equal(cfg.repository, '/srv/rl/var/repo');
  t.equal(cfg.stateDir, '/srv/rl/var/state');
  t.equal(cfg.catalog, '/srv/rl/var/state/catalog.sqlite');
  t.equal(cfg.driver, 'qemu');
});

t.test('environment overrides win over the file', async (t) => {
  const file = write('ok.json', JSON.stringify({ driver: 'libvirt', repository: '/data/repo' }));
  const cfg = loadConfig({ file, env: { RESTORELAB_REPO: '/other/repo' } });
  t.equal(cfg.driver, 'libvirt');
  t.equal(cfg.repository, '/other/repo');
});

t.test(
  'fuse.group: none by default (owner-only mounts), from the file or RESTORELAB_FUSE_GROUP, and only a group name or gid',
  async (t) => {
    t.equal(loadConfig({ env: {} }).fuse.group, undefined);
    const file = write('fuse.json', JSON.stringify({ fuse: { group: 'libvirt-qemu' } }));
    t.equal(loadConfig({ file, env: {} }).fuse.group, 'libvirt-qemu');
    t.equal(loadConfig({ file, env: { RESTORELAB_FUSE_GROUP: '64055' } }).fuse.group, '64055');
    t.throws(() => loadConfig({ file: write('fuse-bad.json', JSON.stringify({ fuse: { group: 'kvm,disk' } })), env: {} }), /\/fuse\/group/);
  },
);

t.test(
  'repositorySyncLevel: filesystem when unset, file/filesystem/none from the file or RESTORELAB_SYNC_LEVEL, anything else refused',
  async (t) => {
    const unset = loadConfig({ env: {} });
    t.equal(unset.repositorySyncLevel, undefined);
    t.same(syncLevelOption(unset), {}, 'openRepository then takes DEFAULT_SYNC_LEVEL (filesystem)');
    const file = write('sync-file.json', JSON.stringify({ repositorySyncLevel: 'file' }));
    t.same(syncLevelOption(loadConfig({ file, env: {} })), { syncLevel: 'file' });
    t.equal(loadConfig({ file, env: { RESTORELAB_SYNC_LEVEL: 'none' } }).repositorySyncLevel, 'none', 'the environment wins');

    const bad = write('sync-bad.json', JSON.stringify({ repositorySyncLevel: 'fsync' }));
    const err = t.throws(() => loadConfig({ file: bad, env: {} })) as unknown as RestorelabError;
    t.ok(err instanceof RestorelabError);
    t.equal(err.code, 'SCHEMA_INVALID');
    t.match(err.message, /\/repositorySyncLevel: must be one of "file", "filesystem", "none"/);
    t.match(err.message, /sync-bad\.json/, 'names the file');
    t.equal(err.exitCode, 2);
    t.throws(() => loadConfig({ env: { RESTORELAB_SYNC_LEVEL: 'Filesystem' } }), /\/repositorySyncLevel: must be one of/);
    t.throws(() => loadConfig({ file: write('sync-type.json', '{"repositorySyncLevel": 1}'), env: {} }), /\/repositorySyncLevel/);
  },
);

t.test('an unknown driver is rejected with its path and a fix', async (t) => {
  const file = write('bad-driver.json', JSON.stringify({ driver: 'vmware' }));
  const err = t.throws(() => loadConfig({ file, env: {} })) as unknown as RestorelabError;
  t.ok(err instanceof RestorelabError);
  t.match(err.message, /\/driver: must be one of "qemu", "libvirt"/);
  t.match(err.hint ?? '', /config\/schemas\/config.schema.json/);
  t.equal(err.exitCode, 2);
});

t.test('an unknown key, a wrong type and broken JSON are each rejected', async (t) => {
  t.throws(() => loadConfig({ file: write('unknown.json', '{"repositry": "x"}'), env: {} }), /unknown property "repositry"/);
  t.throws(
    () => loadConfig({ file: write('type.json', '{"limits": {"chunkCacheMiB": "lots"}}'), env: {} }),
    /\/limits\/chunkCacheMiB: must be integer/,
  );
  t.throws(() => loadConfig({ file: write('syntax.json', '{"driver": '), env: {} }), /is not valid JSON/);
  t.throws(() => loadConfig({ file: join(dir, 'missing.json'), env: {} }), /cannot read config file/);
  t.throws(() => loadConfig({ env: { RESTORELAB_DRIVER: 'xen' } }), /\/driver/);
});

t.test('VM definitions: the example shape passes, broken ones name the field', async (t) => {
  const vm = {
    name: 'web',
    memoryMiB: 256,
    vcpus: 1,
    disks: [{ name: 'root' }],
    nics: [{ mac: '52:54:00:77:00:10', network: 'prod', ip: '192.168.77.10' }],
  };
  t.same(assertValid('vm.schema.json', vm, 'vm'), vm);
  t.throws(() => assertValid('vm.schema.json', { ...vm, nics: [{ mac: 'zz', network: 'prod' }] }, 'vm'), /\/nics\/0\/mac/);
  t.throws(() => assertValid('vm.schema.json', { ...vm, disks: [] }, 'vm'), /\/disks: must NOT have fewer than 1 items/);
  t.throws(() => assertValid('vm.schema.json', { name: 'x' }, 'vm'), /must have required property 'memoryMiB'/);
});
