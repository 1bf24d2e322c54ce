// YARA through one streaming process per scan and compiled rule sets kept in
// the state directory (src/scan/yara.ts), with the real yara and yarac: a
// file is answered while the list is still open, errors and odd names are
// answered per file, a yara that dies fails every file still waiting, and a
// compiled set is reused only when it is intact and its source has no include.
import t from 'tap';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RestorelabError } from '../../src/errors.js';
import { compileRules, YaraScan, type FileAnswer } from '../../src/scan/yara.js';

const work = mkdtempSync(join(tmpdir(), 'scan-yara-stream-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const MARK = 'YARA-STREAM-TEST-MARK-31';
const rulesFile = join(work, 'rules.yar');
writeFileSync(
  rulesFile,
  `rule Mark { strings: $a = "${MARK}" condition: $a }\nrule Other { strings: $b = "never-present-${MARK}" condition: $b }\n`,
);
const files = join(work, 'files');
mkdirSync(files);
const hit = join(files, 'hit.bin');
const clean = join(files, 'clean.txt');
const newline = join(files, 'new\nline.bin');
const colon = join(files, 'a: b.bin');
writeFileSync(hit, `xx ${MARK} yy`);
writeFileSync(clean, 'nothing\n');
writeFileSync(newline, `${MARK} under a name with a newline`);
writeFileSync(colon, `${MARK} under a name with a colon`);

t.test('one yara answers each file while the list is still open', async (t) => {
  const rules = await compileRules(rulesFile, work);
  t.teardown(() => rules.dispose());
  const yara = new YaraScan(rules, { threads: 2 });
  const first = yara.add(Buffer.from(hit));
  await first.queued;
  // The list is not closed yet: the answer must come from a running yara.
  t.same(await first.answer, { rules: ['Mark'] }, 'answered before end()');
  const rest = [clean, newline, colon, join(files, 'missing.bin')].map((p) => yara.add(Buffer.from(p)).answer);
  await yara.end();
  const [c, n, col, missing] = (await Promise.all(rest)) as FileAnswer[];
  t.same(c, { rules: [] }, 'no match: an empty answer, not silence');
  t.same(n, { rules: ['Mark'] }, 'a name with a newline is scanned (through a symlink)');
  t.same(col, { rules: ['Mark'] }, 'a name with ": " is matched back to itself');
  t.match(missing, { error: /could not open file/ }, 'a file yara cannot open is an error, not clean');
  t.same(
    readdirSync(rules.workDir).filter((n) => n !== 'rules.yarc' && n !== 'done.yar'),
    [],
    'the FIFO and the symlinks are removed',
  );
});

t.test('a yara that dies fails the files still waiting and end()', async (t) => {
  const rules = await compileRules(rulesFile, work);
  t.teardown(() => rules.dispose());
  // Not compiled rules any more: yara exits with an error before it scans anything.
  writeFileSync(rules.compiled, 'garbage');
  const yara = new YaraScan(rules, { threads: 1 });
  const a = yara.add(Buffer.from(hit));
  await t.rejects(a.answer, { code: 'YARA_FAILED' });
  await t.rejects(yara.end(), { code: 'YARA_FAILED' });
});

t.test('compiled rule sets are cached by source and yara, checked before use', async (t) => {
  const cacheDir = join(work, 'cache');
  const r1 = await compileRules(rulesFile, work, { cacheDir });
  r1.dispose();
  const cached = readdirSync(cacheDir).sort();
  t.equal(cached.length, 2, 'the compiled set and its digest');
  for (const f of cached) t.equal(statSync(join(cacheDir, f)).mode & 0o777, 0o600, `${f} is private`);
  t.equal(statSync(cacheDir).mode & 0o777, 0o700, 'the cache directory is private');
  const yarc = join(
    cacheDir,
    cached.find((f) => f.endsWith('.yarc'))!,
  );
  const before = statSync(yarc).mtimeMs;

  const r2 = await compileRules(rulesFile, work, { cacheDir });
  t.teardown(() => r2.dispose());
  t.equal(statSync(yarc).mtimeMs, before, 'the second compile took the cached set');
  t.same(readFileSync(r2.compiled), readFileSync(yarc), 'a private copy of it');
  t.equal(r2.hash, r1.hash, 'the rule set hash is the source hash, cached or not');

  // A damaged cached set is not used: it is compiled again, and the scan still finds the mark.
  const bytes = readFileSync(yarc);
  bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 0xff, bytes.length - 1);
  writeFileSync(yarc, bytes);
  const r3 = await compileRules(rulesFile, work, { cacheDir });
  t.teardown(() => r3.dispose());
  t.notOk(readFileSync(r3.compiled).equals(bytes), 'the damaged set was not used');
  const yara = new YaraScan(r3);
  const a = yara.add(Buffer.from(hit)).answer;
  await yara.end();
  t.same(await a, { rules: ['Mark'] });

  // What an include pulls in is not in the source's hash: such a set is compiled every time.
  const inc = join(work, 'with-include.yar');
  writeFileSync(inc, `include "${rulesFile}"\n`);
  const count = readdirSync(cacheDir).length;
  const r4 = await compileRules(inc, work, { cacheDir });
  r4.dispose();
  t.equal(readdirSync(cacheDir).length, count, 'nothing cached for a rule file with an include');
});

t.test('a rule file that does not compile is bad input, cache or not', async (t) => {
  const bad = join(work, 'bad.yar');
  writeFileSync(bad, 'rule { nope');
  const err = await compileRules(bad, work, { cacheDir: join(work, 'cache') }).catch((e: unknown) => e);
  t.ok(err instanceof RestorelabError && err.code === 'YARA_RULES_INVALID', 'YARA_RULES_INVALID');
});
