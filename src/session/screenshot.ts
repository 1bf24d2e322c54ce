/**
 * The live console of a session's VM as PNG, through its driver's
 * screendump: for the API's screenshot route on the host that runs the
 * session, and for a lab worker answering a screenshot task for one of its
 * own (src/workers/worker.ts).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encode } from 'fast-png';
import { notFound } from '../errors.js';
import { parsePpm } from '../hypervisor/screen.js';
import { realDeps } from './deps.js';
import { closeHypervisor } from './seam.js';
import type { RecoverySession } from './session.js';

/** States in which the session's VM exists and has a screen. */
export const SCREEN_STATES: readonly string[] = ['running', 'migrating', 'migrated'];

export async function sessionScreenshot(stateDir: string, s: RecoverySession): Promise<Buffer> {
  if (!SCREEN_STATES.includes(s.state))
    throw notFound(
      'SESSION_NOT_FOUND',
      `session ${s.id} is ${s.state}: its VM has no screen`,
      'restorelab sessions lists the running ones',
    );
  const hv = realDeps.hypervisor(s.driver, { stateDir });
  const dir = mkdtempSync(join(tmpdir(), 'rl-shot-'));
  try {
    const dom = await hv.attach(s.domain);
    if (!dom) throw notFound('SESSION_NOT_FOUND', `session ${s.id}: its VM ${s.domain} is gone`, 'restorelab sessions shows its state');
    const file = join(dir, 'screen');
    const format = await dom.screendump(file);
    const raw = readFileSync(file);
    if (format === 'png') return raw;
    const img = parsePpm(raw);
    return Buffer.from(encode({ width: img.width, height: img.height, data: img.data, channels: 3, depth: 8 }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await closeHypervisor(hv);
  }
}
