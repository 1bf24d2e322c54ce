/**
 * Time as the scheduler sees it. The server uses the system clock; tests
 * hand the Scheduler a clock they move by hand, so a cron schedule is
 * driven through its fire times without waiting on the wall clock (and
 * without sub-second margins that a loaded machine breaks).
 */

export interface Clock {
  now(): Date;
  /** Calls `fn` once at `when` (at once when it has passed); the returned function cancels it. */
  at(when: Date, fn: () => void): () => void;
}

/** setTimeout's longest delay (about 24.8 days); a later time is reached in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export const systemClock: Clock = {
  now: () => new Date(),
  at(when, fn) {
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      const ms = when.getTime() - Date.now();
      timer = ms > MAX_TIMER_MS ? setTimeout(arm, MAX_TIMER_MS) : setTimeout(fn, Math.max(0, ms));
    };
    arm();
    return () => clearTimeout(timer);
  },
};
