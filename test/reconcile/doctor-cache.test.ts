/**
 * `doctor` caches its accelerator verdict per host: the second call answers
 * from the cache (under 2 s, and says so), `--recheck` boots again.
 * Run under the heavy lock: doctor's netns check makes a namespace.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { DoctorOutput } from '../../src/cli/commands/doctor.js';
import { cli, json } from './fixtures/state.js';

const dir = mkdtempSync('/tmp/rldoc-');
const state = join(dir, 'state');
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('the second doctor answers from its cache in under 2 s; --recheck boots again', async (t) => {
  const first = json<DoctorOutput>(await cli(['doctor', '--json'], state));
  t.equal(first.cached, false, 'a fresh state directory has no verdict: the first call boots');
  t.type(first.accelCheckedAt, 'string');

  const start = Date.now();
  const second = json<DoctorOutput>(await cli(['doctor', '--json'], state));
  const ms = Date.now() - start;
  t.equal(second.cached, true, 'the second call says its verdict is cached');
  t.equal(second.accelCheckedAt, first.accelCheckedAt, 'the verdict of the first call');
  t.equal(second.accel, first.accel);
  // The checks are timed in the doctor itself: on a loaded CI host node's own
  // start-up alone can take a second, which no cache can save.
  t.ok(second.seconds < 2, `answered in ${second.seconds} s (< 2; ${ms} ms with the CLI's start-up)`);
  t.ok(first.seconds > second.seconds, `the cached call (${second.seconds} s) is quicker than the one that booted (${first.seconds} s)`);
  t.same(second.stale, [], 'a fresh state directory holds nothing stale');

  const again = json<DoctorOutput>(await cli(['doctor', '--recheck', '--json'], state));
  t.equal(again.cached, false, '--recheck boots again');
  t.not(again.accelCheckedAt, first.accelCheckedAt);
});
