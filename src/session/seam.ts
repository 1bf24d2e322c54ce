/**
 * What a session needs from the layers below it, as one seam: the
 * repository (to resolve the VM and point), publishing, and a hypervisor
 * driver. Unit tests hand in contract-shaped fakes; everything else uses
 * realDeps (deps.ts).
 */
import type { RepositoryReader } from '../repo/contract.js';
import type { PublicationOwner, PublishOptions, RunningPublication } from '../publish/contract.js';
import type { Hypervisor } from '../hypervisor/types.js';

export interface SessionDeps {
  openRepository(path: string): Promise<RepositoryReader>;
  startPublication(opts: PublishOptions): Promise<RunningPublication>;
  /**
   * Removes a publication whose serving process is gone (a supervisor that
   * died), discarding its overlay, on behalf of `owner` (the session: nobody
   * else's publication is touched); a publication already gone is no error.
   */
  removePublication(stateDir: string, id: string, owner: PublicationOwner): Promise<void>;
  hypervisor(driver: 'qemu' | 'libvirt', opts: { stateDir: string; accel?: 'auto' | 'kvm' | 'tcg' }): Hypervisor;
}

/**
 * Closes the driver on the way out (the libvirt driver holds a connection
 * that keeps the event loop alive); a failure to close is not the caller's.
 */
export async function closeHypervisor(hv: Hypervisor): Promise<void> {
  await hv.close().catch(() => undefined);
}
