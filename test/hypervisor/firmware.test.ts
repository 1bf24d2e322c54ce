// UEFI firmware lookup and the per-domain EFI variable store (the boots are in test/session/recover-uefi).
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { domainVariableStore, firmwareFor, uefiFirmware } from '../../src/hypervisor/firmware.js';
import { RestorelabError } from '../../src/errors.js';
import type { DomainSpec } from '../../src/hypervisor/types.js';

const dir = mkdtempSync(join(tmpdir(), 'rl-firmware-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('no OVMF: MISSING_COMPONENT, naming the package', async (t) => {
  const err = (() => {
    try {
      uefiFirmware([{ image: join(dir, 'none.fd'), varsTemplate: join(dir, 'none-vars.fd') }]);
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  t.ok(err instanceof RestorelabError);
  t.equal((err as RestorelabError).code, 'MISSING_COMPONENT');
  t.match((err as RestorelabError).hint, /apt-get install ovmf/);
});

t.test("a domain's variable store is its own copy of the template, made once", async (t) => {
  const image = join(dir, 'code.fd');
  const varsTemplate = join(dir, 'vars.fd');
  writeFileSync(image, 'code');
  writeFileSync(varsTemplate, 'empty store');
  const fw = uefiFirmware([
    { image: join(dir, 'missing.fd'), varsTemplate },
    { image, varsTemplate },
  ]);
  t.same(fw, { image, varsTemplate }, 'the first complete build');
  const vmDir = mkdtempSync(join(dir, 'vm-'));
  const store = domainVariableStore(vmDir, fw);
  t.equal(store, join(vmDir, 'efivars.fd'));
  writeFileSync(store, 'boot entries the guest wrote');
  t.equal(domainVariableStore(vmDir, fw), store);
  t.equal(readFileSync(store, 'utf8'), 'boot entries the guest wrote', 'a second start keeps what the guest wrote');
  t.equal(readFileSync(varsTemplate, 'utf8'), 'empty store', 'the template is never written');
});

t.test('a BIOS definition asks for no firmware', async (t) => {
  const spec = {
    vm: { name: 'x', memoryMiB: 64, vcpus: 1, disks: [{ name: 'root' }], nics: [] },
    disks: [],
    nics: [],
  } as unknown as DomainSpec;
  t.equal(firmwareFor(spec, dir), undefined);
  t.equal(firmwareFor({ ...spec, vm: { ...spec.vm, firmware: 'bios' } }, dir), undefined);
});
