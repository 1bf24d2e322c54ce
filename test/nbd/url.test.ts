/**
 * NBD URLs (src/nbd/url.ts) and what the drivers make of them: the unix and
 * TCP forms round-trip, awkward paths survive the query's form decoding, bad
 * URLs and bad --tcp values get registered codes, and the qemu blockdev node
 * and libvirt disk source name the same socket or address and export. That
 * QEMU and libvirt accept them is shown by real boots
 * (test/session/recover-nbd.test.ts) and qemu-img (test/publish/publish-nbd.test.ts).
 */
import t from 'tap';
import { formatNbdUrl, isNbdUrl, parseHostPort, parseNbdUrl, NBD_DEFAULT_PORT } from '../../src/nbd/url.js';
import { fileNode } from '../../src/hypervisor/qemu.js';
import { domainXml } from '../../src/hypervisor/libvirt.js';
import type { DomainSpec } from '../../src/hypervisor/types.js';

t.test('the two forms, as qemu-img and nbdinfo write them', async (t) => {
  t.equal(
    formatNbdUrl({ server: { type: 'unix', path: '/var/lib/rl/publications/web-1/nbd.sock' }, export: 'root' }),
    'nbd+unix:///root?socket=/var/lib/rl/publications/web-1/nbd.sock',
  );
  t.equal(formatNbdUrl({ server: { type: 'inet', host: '127.0.0.1', port: 10809 }, export: 'root' }), 'nbd://127.0.0.1:10809/root');
  t.equal(formatNbdUrl({ server: { type: 'inet', host: '::1', port: 5000 }, export: 'data' }), 'nbd://[::1]:5000/data');
  t.ok(isNbdUrl('nbd://h:1/x') && isNbdUrl('nbd+unix:///x?socket=/s'));
  t.notOk(isNbdUrl('nfs://h/x') || isNbdUrl('/var/x.raw'));
});

t.test('round trips, with the characters a query would mangle', async (t) => {
  for (const target of [
    { server: { type: 'unix' as const, path: '/tmp/a b+c&d=e%f/nbd.sock' }, export: 'disk+1 x' },
    { server: { type: 'unix' as const, path: '/tmp/rl-nbd-AbC123/nbd.sock' }, export: '' },
    { server: { type: 'inet' as const, host: '192.0.2.7', port: 0 }, export: 'root' },
    { server: { type: 'inet' as const, host: 'fe80::1', port: 65535 }, export: 'a/b' },
  ]) {
    const url = formatNbdUrl(target);
    t.same(parseNbdUrl(url), target, url);
  }
  t.same(parseNbdUrl('nbd://example.org/x'), { server: { type: 'inet', host: 'example.org', port: NBD_DEFAULT_PORT }, export: 'x' });
});

t.test('bad URLs and bad --tcp values: registered codes', async (t) => {
  for (const bad of ['nbd+unix:///root', 'nbd://', 'http://h/x', 'nbd+unix://host/root?socket=/s', 'not a url']) {
    t.throws(() => parseNbdUrl(bad), { code: 'BAD_NBD_URL' }, bad);
  }
  t.same(parseHostPort('127.0.0.1:10809'), { host: '127.0.0.1', port: 10809 });
  t.same(parseHostPort('[::1]:0'), { host: '::1', port: 0 });
  t.same(parseHostPort('localhost:1'), { host: 'localhost', port: 1 });
  for (const bad of ['127.0.0.1', ':10809', '127.0.0.1:65536', '127.0.0.1:-1', 'a b:1', '::1:5', '127.0.0.1:80x', '']) {
    t.throws(() => parseHostPort(bad), { code: 'BAD_LISTEN_ADDRESS', exitCode: 2 }, JSON.stringify(bad));
  }
});

t.test("qemu: QEMU's own NBD client, unix or inet", async (t) => {
  t.same(fileNode('nbd+unix:///root?socket=/run/x.sock', false), {
    driver: 'nbd',
    server: { type: 'unix', path: '/run/x.sock' },
    export: 'root',
    'read-only': false,
  });
  t.same(fileNode('nbd://127.0.0.1:10900/data', true), {
    driver: 'nbd',
    server: { type: 'inet', host: '127.0.0.1', port: '10900' },
    export: 'data',
    'read-only': true,
  });
  t.equal((fileNode('/a/root.raw', false) as { driver: string }).driver, 'file', 'files stay files');
});

t.test('libvirt: a network disk of protocol nbd', async (t) => {
  const spec = (path: string): DomainSpec => ({
    vm: { name: 'v', memoryMiB: 128, vcpus: 1, disks: [{ name: 'root', bus: 'virtio' }], nics: [] },
    disks: [{ name: 'root', path, format: 'raw' }],
    nics: [],
  });
  const unix = domainXml(spec("nbd+unix:///root?socket=/run/a'b.sock"), '/st/vm', 'tcg', []);
  t.match(unix, /<disk type='network' device='disk'>/);
  t.match(unix, /<source protocol='nbd' name='root'><host transport='unix' socket='\/run\/a&apos;b.sock'\/><\/source>/);
  const tcp = domainXml(spec('nbd://127.0.0.1:10900/root'), '/st/vm', 'tcg', []);
  t.match(tcp, /<source protocol='nbd' name='root'><host name='127.0.0.1' port='10900'\/><\/source>/);
});
