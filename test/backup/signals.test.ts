/**
 * Unit tests of the ransomware signals (src/backup/signals.ts): what counts
 * as incompressible (on blobs the real codec makes, plain and encrypted),
 * what counts as changed, and the anomaly rule on made-up histories. The
 * real backup of a guest whose files get encrypted is ransomware.test.ts.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { createCodec } from '../../src/repo/chunk-codec.js';
import type { RepoConfig } from '../../src/repo/api.js';
import type { RestorePoint } from '../../src/repo/contract.js';
import {
  changedBytes,
  compressedPayload,
  decideAnomaly,
  ENTROPY_MIN_NEW_BYTES,
  HISTORY_POINTS,
  historyOf,
  mad,
  median,
  SignalsRecorder,
  type SignalFigures,
} from '../../src/backup/signals.js';

const MiB = 1024 * 1024;
const chunk = MiB;
const config = (encryption: 'none' | 'aes-256-gcm'): RepoConfig =>
  ({
    format: 'restorelab-repository',
    version: encryption === 'none' ? 1 : 2,
    id: '00000000-0000-4000-8000-000000000000',
    chunkSize: chunk,
    hash: encryption === 'none' ? 'sha256' : 'hmac-sha256',
    compression: 'zstd',
    encryption,
    created: '2026-01-01T00:00:00.000Z',
  }) as RepoConfig;

/** Text-like bytes: what most of a VM's new data is on an ordinary night. */
function text(n: number): Buffer {
  const words = ['restore', 'point', 'chunk', 'log', 'line', 'GET /index.html 200', 'nightly', '\n'];
  let s = '';
  while (s.length < n) s += words[Math.floor(Math.random() * words.length)] + ' ';
  return Buffer.from(s.slice(0, n));
}

t.test('compressedPayload: random bytes are incompressible, text is not, encrypted or not', async (t) => {
  for (const enc of ['none', 'aes-256-gcm'] as const) {
    const codec = createCodec(config(enc), enc === 'none' ? undefined : randomBytes(32));
    const rnd = randomBytes(chunk);
    const r = compressedPayload(codec.encode(rnd), chunk);
    t.ok(r.incompressible, `${enc}: random data is incompressible`);
    t.ok(r.stored >= chunk, `${enc}: stored raw (${r.stored} bytes), nonce and tag not counted as payload`);
    t.ok(r.stored <= chunk, `${enc}: the seal's overhead is not counted`);
    const txt = compressedPayload(codec.encode(text(chunk)), chunk);
    t.notOk(txt.incompressible, `${enc}: text compresses (${txt.stored} of ${chunk} bytes)`);
    // Half random, half zeros compresses to about half: compressible.
    const half = Buffer.concat([randomBytes(chunk / 2), Buffer.alloc(chunk / 2)]);
    t.notOk(compressedPayload(codec.encode(half), chunk).incompressible, `${enc}: half random, half zeros is compressible`);
    // 97 % random: zstd shrinks it a little (or not at all), below the 5 % it must save.
    const most = Buffer.concat([randomBytes(chunk - chunk / 32), Buffer.alloc(chunk / 32)]);
    t.ok(compressedPayload(codec.encode(most), chunk).incompressible, `${enc}: 97 % random data is incompressible`);
  }
});

t.test('changedBytes: digests differing from the parent at the same offset', async (t) => {
  const size = 4 * chunk + 1000;
  const d = ['a', 'b', null, 'c', 'e'];
  t.equal(
    changedBytes(size, chunk, d, undefined),
    3 * chunk + 1000,
    'no parent: every data chunk counts, the short last one by its length',
  );
  t.equal(changedBytes(size, chunk, d, d), 0, 'the same digests: nothing changed');
  t.equal(changedBytes(size, chunk, d, ['a', 'x', null, 'c', 'e']), chunk, 'one chunk differs');
  t.equal(changedBytes(size, chunk, d, ['a', 'b', 'z', 'c', 'e']), chunk, 'data that became a hole changed');
  t.equal(changedBytes(size, chunk, d, ['a', 'b', null]), chunk + 1000, 'a grown disk: its new data chunks changed, its new holes did not');
  t.equal(changedBytes(2 * chunk, chunk, ['a', 'b'], ['a', 'b', 'c', 'd']), 0, 'a shrunk disk: what remains is compared');
});

t.test('SignalsRecorder: totals over disks and new chunks; full when no parent disk', async (t) => {
  const codec = createCodec(config('none'));
  const r = new SignalsRecorder('P1');
  r.newChunk(chunk, codec.encode(randomBytes(chunk)));
  r.newChunk(chunk, codec.encode(text(chunk)));
  r.newChunk(chunk, codec.encode(text(chunk)));
  r.newChunk(chunk, codec.encode(text(chunk)));
  r.disk(4 * chunk, chunk, ['a', 'b', 'c', 'd'], { size: 4 * chunk, digests: ['a', 'b', 'x', 'y'] });
  r.disk(2 * chunk, chunk, ['p', null], undefined);
  const f = r.figures();
  t.equal(f.newBytes, 4 * chunk);
  t.equal(f.incompressibleBytes, chunk);
  t.equal(f.incompressibleRatio, 0.25);
  t.ok(f.newStoredBytes < 2 * chunk, 'text stored compressed');
  t.equal(f.changedBytes, 3 * chunk, 'two chunks of the first disk, the data chunk of the new second disk');
  t.equal(f.changeRate, 0.5);
  t.equal(f.full, false, 'one disk had a parent');
  t.equal(f.comparedWith, 'P1');
  t.equal(f.resized, false);
  const first = new SignalsRecorder(null);
  first.disk(2 * chunk, chunk, ['a', null]);
  t.same(
    { full: first.figures().full, comparedWith: first.figures().comparedWith, changed: first.figures().changedBytes },
    { full: true, comparedWith: null, changed: chunk },
  );
  const grown = new SignalsRecorder('P');
  grown.disk(3 * chunk, chunk, ['a', 'b', 'c'], { size: 2 * chunk, digests: ['a', 'b'] });
  t.equal(grown.figures().resized, true, 'a disk whose size changed is reported as resized');
  t.equal(new SignalsRecorder(null).figures().incompressibleRatio, 0, 'no new bytes: ratio 0, not NaN');
});

t.test('median and MAD', async (t) => {
  t.equal(median([]), 0);
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5);
  t.equal(mad([1, 1, 2, 2, 4, 6, 9]), 1, 'the textbook example');
});

/** A point's figures: `rate` of a 10 GiB disk changed, `inc` of its new bytes incompressible. */
function fig(rate: number, inc: number, o: { full?: boolean; newBytes?: number } = {}): SignalFigures {
  const size = 10 * 1024 * MiB;
  const newBytes = o.newBytes ?? Math.round(rate * size);
  return {
    changedBytes: Math.round(rate * size),
    changeRate: rate,
    full: o.full ?? false,
    comparedWith: o.full ? null : 'parent',
    resized: false,
    newBytes,
    newStoredBytes: Math.round(newBytes * 0.5),
    incompressibleBytes: Math.round(newBytes * inc),
    incompressibleRatio: inc,
  };
}

const ordinary = [fig(0.6, 0.12, { full: true }), fig(0.02, 0.05), fig(0.03, 0.08), fig(0.025, 0.04), fig(0.02, 0.06)];

t.test('anomaly rule: encrypted files after ordinary nights', async (t) => {
  const ransom = decideAnomaly(fig(0.45, 0.93), ordinary);
  t.ok(ransom.anomaly, 'most new data incompressible and the change rate jumps');
  t.equal(ransom.reasons.length, 2, 'both rules name their figures');
  t.match(ransom.reasons[0], /93\.0 % of the new data is incompressible.*previous 5 point\(s\) had a median of 6\.0 %/);
  t.match(ransom.reasons[1], /45\.0 % of the disk changed, the previous 4 incremental point\(s\) had a median of 2\.\d %/);
  t.equal(ransom.baseline.points, 5);
  t.equal(ransom.baseline.changeRateMedian, 0.0225, 'the full backup is not an incremental rate');

  const quietEncryption = decideAnomaly(fig(0.03, 0.9), ordinary);
  t.ok(quietEncryption.anomaly, 'a few GiB encrypted: the change rate is ordinary, the entropy is not');
  t.equal(quietEncryption.reasons.length, 1);

  const bigCopy = decideAnomaly(fig(0.4, 0.1), ordinary);
  t.ok(bigCopy.anomaly, 'a change rate about 18 times the median is flagged even when it compresses');
  t.match(bigCopy.reasons[0], /of the disk changed/);

  for (const [what, f] of [
    ['an ordinary night', fig(0.03, 0.07)],
    ['a busier night (2x)', fig(0.05, 0.15)],
    ['no new data', fig(0, 0, { newBytes: 0 })],
  ] as const) {
    t.notOk(decideAnomaly(f, ordinary).anomaly, `${what} is not an anomaly`);
  }
});

t.test('anomaly rule: floors, the first backup, and VMs that store compressed media', async (t) => {
  t.notOk(decideAnomaly(fig(1, 0.9, { full: true }), []).anomaly, 'a first backup has nothing to compare with');
  const second = decideAnomaly(fig(0.5, 0.95), [fig(0.6, 0.1, { full: true })]);
  t.ok(second.anomaly, 'the second point is judged on entropy against the first');
  t.equal(second.reasons.length, 1, 'but not on change rate: no incremental history');
  t.notOk(
    decideAnomaly(fig(0.8, 0.1, { full: true }), ordinary).anomaly,
    'a full backup (a disk that was new) is never a change-rate jump',
  );
  t.notOk(
    decideAnomaly(fig(0.01, 0.99, { newBytes: ENTROPY_MIN_NEW_BYTES - 1 }), ordinary).anomaly,
    'below 4 MiB of new data the share is noise',
  );
  const flat = [fig(0.02, 0.05, { full: true }), fig(0.02, 0.05), fig(0.02, 0.05), fig(0.02, 0.05)];
  t.notOk(decideAnomaly(fig(0.05, 0.3), flat).anomaly, 'a flat history (MAD 0) does not flag a small wobble');
  t.notOk(decideAnomaly(fig(0.08, 0.05), flat).anomaly, '4x the median but under 10 % of the disk is not a jump');
  // A media server: its new data was always mostly incompressible. Encryption does not stand out (a false negative, documented).
  const media = [fig(0.3, 0.9, { full: true }), fig(0.04, 0.85), fig(0.05, 0.92), fig(0.03, 0.88)];
  t.notOk(decideAnomaly(fig(0.05, 0.97), media).anomaly, 'new media on a media server is ordinary');
  // ...and the first night such a VM starts storing media is flagged (the documented false positive).
  t.ok(decideAnomaly(fig(0.04, 0.9), ordinary).anomaly, 'a VM that starts storing compressed media is flagged once it does');
  const mediaAdapted = [...ordinary.slice(0, 2), fig(0.03, 0.9), fig(0.04, 0.88), fig(0.03, 0.91), fig(0.02, 0.92)];
  t.notOk(decideAnomaly(fig(0.03, 0.9), mediaAdapted).anomaly, 'once most of its history holds media, it is ordinary again');
});

t.test("historyOf: the VM's previous points with signals, oldest first, at most HISTORY_POINTS", async (t) => {
  const point = (i: number, signals: boolean): RestorePoint => ({
    id: `p${i}`,
    vm: { name: 'v', memoryMiB: 1, vcpus: 1, disks: [], nics: [] } as unknown as RestorePoint['vm'],
    disks: [],
    consistency: 'crash',
    time: new Date(Date.UTC(2026, 0, 1 + i)).toISOString(),
    source: 's',
    stats: {
      bytesRead: 0,
      bytesNew: 0,
      bytesReused: 0,
      bytesZero: 0,
      seconds: 0,
      ...(signals ? { signals: decideAnomaly(fig(i / 100, 0), []) } : {}),
    },
  });
  const points = Array.from({ length: 14 }, (_, i) => point(i, i !== 5)).reverse();
  const h = historyOf(points, points[0]!.time);
  t.equal(h.length, HISTORY_POINTS);
  t.same(
    h.map((x) => x.changeRate),
    [0.02, 0.03, 0.04, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11, 0.12],
    'the ten before the newest, oldest first, the one without signals skipped',
  );
  t.same(historyOf(points, points.at(-1)!.time), [], 'nothing before the first point');
});
