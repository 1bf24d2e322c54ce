/**
 * One error type for everything a user can get wrong or a host can lack.
 *
 * Every error a command reports carries a stable `code`, a message that says
 * what happened, a `hint` that says what to do, and the process exit code the
 * CLI uses (documented in docs/cli.md). Anything that is not a RestorelabError
 * is a bug and is reported as such.
 */

export const ExitCode = {
  ok: 0,
  failure: 1,
  badInput: 2,
  verifyFailed: 3,
  missingComponent: 4,
  notFound: 5,
  busy: 6,
  notImplemented: 7,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class RestorelabError extends Error {
  readonly code: string;
  readonly hint: string | undefined;
  readonly exitCode: ExitCode;

  constructor(code: string, message: string, opts: { hint?: string; exitCode?: ExitCode; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'RestorelabError';
    this.code = code;
    this.hint = opts.hint;
    this.exitCode = opts.exitCode ?? ExitCode.failure;
  }
}

export function badInput(code: string, message: string, hint?: string): RestorelabError {
  return new RestorelabError(code, message, { hint, exitCode: ExitCode.badInput });
}

export function notFound(code: string, message: string, hint?: string): RestorelabError {
  return new RestorelabError(code, message, { hint, exitCode: ExitCode.notFound });
}

export function missingComponent(component: string, hint: string): RestorelabError {
  return new RestorelabError('MISSING_COMPONENT', `required system component is missing: ${component}`, {
    hint,
    exitCode: ExitCode.missingComponent,
  });
}

/** Node's system errors carry an errno code; this narrows `unknown` to them. */
export function isErrno(err: unknown, code?: string): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' &&
    (code === undefined || (err as NodeJS.ErrnoException).code === code);
}
