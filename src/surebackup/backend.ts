/** Factory for the real LabBackend (hypervisor + lab + publish); the lead fills it in. */
import { ExitCode, RestorelabError } from '../errors.js';
import type { LabBackend } from './runner.js';

export function createLabBackend(_opts: { repo: string; stateDir: string }): LabBackend {
  throw new RestorelabError('NOT_AVAILABLE', 'the SureBackup lab backend is not wired to the hypervisor/lab/publish pieces yet', {
    hint: 'this build can validate jobs (surebackup validate) but not run them', exitCode: ExitCode.notImplemented,
  });
}
