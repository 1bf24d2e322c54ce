/** Seconds from `t0` (performance.now()) until `url` first answers 200: a recovered guest's service is up. */
export async function firstHttp(url: string, t0: number): Promise<number> {
  for (;;) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (r.status === 200) return (performance.now() - t0) / 1000;
    } catch {
      // not serving yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
