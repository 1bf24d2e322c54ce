/**
 * Waiting for a state instead of sleeping a guessed time (docs/testing.md):
 * polls `done` until it holds or the deadline passes, and says which. The
 * caller's assertion right after says what was expected, so a state that
 * never comes fails there with its own message.
 */
export async function settle(done: () => boolean | Promise<boolean>, deadlineMs: number, intervalMs = 20): Promise<boolean> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    if (await done()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
