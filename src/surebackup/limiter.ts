/**
 * Global limiter shared by every job in the process: at most `slots` VMs
 * booted at once and their memory within `memoryMiB`, so two jobs together
 * cannot overload the host. Waiters are served first-come first-served.
 */
export class Limiter {
  private used = 0;
  private mem = 0;
  private readonly queue: { need: number; go: () => void }[] = [];
  constructor(
    readonly slots: number,
    readonly memoryMiB: number,
  ) {}

  async acquire(memoryMiB: number, signal?: AbortSignal): Promise<() => void> {
    const need = Math.min(memoryMiB, this.memoryMiB);
    if (this.queue.length === 0 && this.fits(need)) {
      this.used++;
      this.mem += need;
    } else {
      // pump() reserves for us before resolving, so nobody can slip in between.
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => {
          const i = this.queue.indexOf(w);
          if (i >= 0) {
            this.queue.splice(i, 1);
            reject(signal?.reason);
          }
        };
        const w = {
          need,
          go: (): void => {
            signal?.removeEventListener('abort', onAbort);
            resolve();
          },
        };
        this.queue.push(w);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.used--;
      this.mem -= need;
      this.pump();
    };
  }

  private fits(need: number): boolean {
    return this.used < this.slots && this.mem + need <= this.memoryMiB;
  }

  private pump(): void {
    while (this.queue.length > 0 && this.fits(this.queue[0]!.need)) {
      const w = this.queue.shift()!;
      this.used++;
      this.mem += w.need;
      w.go();
    }
  }
}

/** Job-level cap: a plain counting semaphore. */
export async function mapLimited<T, R>(items: T[], cap: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(cap, items.length)) }, worker));
  return out;
}
