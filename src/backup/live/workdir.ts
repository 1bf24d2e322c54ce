/**
 * The private work directory of one live backup: the fleecing images and
 * the NBD socket QEMU serves them on. One per VM source (its QMP socket or
 * libvirt domain), so it doubles as the "one live backup per VM at a time"
 * lock: the `owner` file names the process holding it. A directory whose
 * owner is dead is a killed backup's and is removed with its leftovers.
 */
import { createHash } from 'node:crypto';
import { lstat, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processAlive } from '../../host/process.js';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from '../../host/private-files.js';
import { RestorelabError, isErrno } from '../../errors.js';

export interface WorkDir {
  dir: string;
  release(): Promise<void>;
}

export async function claimWorkDir(sourceKey: string, onWarning?: (m: string) => void): Promise<WorkDir> {
  const dir = join(
    process.env.RESTORELAB_LIVE_DIR ?? tmpdir(),
    `restorelab-live-${createHash('sha256').update(sourceKey).digest('hex').slice(0, 16)}`,
  );
  const owner = join(dir, 'owner');
  for (let attempt = 0; ; attempt++) {
    try {
      await mkdir(dir, { mode: PRIVATE_DIR_MODE });
      await writeFile(owner, `${process.pid}\n`, { mode: PRIVATE_FILE_MODE, flag: 'wx' });
      return { dir, release: () => rm(dir, { recursive: true, force: true }) };
    } catch (err) {
      if (!isErrno(err, 'EEXIST') || attempt > 0) throw err;
    }
    // Someone's directory: refuse anything but a real directory of ours, then look at its owner.
    const st = await lstat(dir);
    if (!st.isDirectory() || st.uid !== process.getuid?.()) {
      throw new RestorelabError('LIVE_WORKDIR_UNSAFE', `${dir} exists and is not a directory owned by this user`, {
        hint: `remove it (it is not restorelab's), or set RESTORELAB_LIVE_DIR`,
      });
    }
    const pid = Number((await readFile(owner, 'utf8').catch(() => '')).trim()) || undefined;
    if (pid !== undefined && pid !== process.pid && processAlive(pid)) {
      throw new RestorelabError('LIVE_BACKUP_RUNNING', `a live backup of ${sourceKey} is already running (process ${pid})`, {
        hint: 'wait for it to finish',
      });
    }
    onWarning?.(`removed the work directory of an interrupted live backup of ${sourceKey} (process ${pid ?? 'unknown'} is gone)`);
    await rm(dir, { recursive: true, force: true });
  }
}
