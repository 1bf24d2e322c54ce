/**
 * Seconds from `t0` (performance.now()) until `url` first answers 200: a
 * recovered guest's service is up.
 *
 * A probe starts every 250 ms without waiting for the one before: until the
 * guest's network is up a request hangs until its 2 s timeout, and probing
 * one at a time made the figure move in steps of up to two seconds.
 */
const PROBE_EVERY_MS = 250;
const PROBE_TIMEOUT_MS = 2000;

export function firstHttp(url: string, t0: number): Promise<number> {
  return new Promise((resolve) => {
    let done = false;
    const probe = (): void => {
      fetch(url, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) }).then(
        (r) => {
          void r.body?.cancel();
          if (r.status !== 200 || done) return;
          done = true;
          clearInterval(timer);
          resolve((performance.now() - t0) / 1000);
        },
        () => undefined, // not serving yet
      );
    };
    const timer = setInterval(probe, PROBE_EVERY_MS);
    probe();
  });
}
