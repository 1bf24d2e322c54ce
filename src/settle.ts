/**
 * Waits for every part, then rethrows the first failure. For parts that fill
 * one caller's buffer: once the caller hears of a failure it may free or
 * reuse the buffer (libfuse does), so no part may still be writing it.
 */
export async function settleAll(parts: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(parts);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}
