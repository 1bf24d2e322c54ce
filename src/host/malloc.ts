/**
 * Environment for restorelab's long-running processes (a background
 * publisher, a session supervisor, the server under systemd).
 *
 * They allocate and free 4 MiB chunk buffers all day. glibc raises its mmap
 * threshold after the first such buffer is freed, so later ones come from the
 * heap arenas, fragment them, and are never returned to the system: the
 * publisher's peak RSS grew by about 70 MiB over the cache size on a
 * sequential read (measured; docs/publish.md). A fixed threshold keeps every
 * large buffer in its own mapping, freed at once; fewer arenas bound what the
 * decode worker threads keep. glibc reads these only at start-up, so they are
 * set on the spawn, not in the running process. Values already in the
 * environment win.
 */
export const LONG_RUNNING_MALLOC_ENV: Readonly<Record<string, string>> = {
  MALLOC_MMAP_THRESHOLD_: String(128 * 1024),
  MALLOC_ARENA_MAX: '2',
};

export function longRunningEnv(base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return { ...LONG_RUNNING_MALLOC_ENV, ...base };
}
