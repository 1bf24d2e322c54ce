/**
 * One error type for everything a user can get wrong or a host can lack.
 *
 * Every error a command reports carries a stable `code`, a message that says
 * what happened, a `hint` that says what to do, and the process exit code the
 * CLI uses. The code must be in the registry (src/errors/registry.ts, listed in
 * docs/errors.md), which fixes the exit code and the API's HTTP status from the
 * code's class. Anything that is not a RestorelabError is a bug and is reported
 * as such.
 */
import { ERROR_CLASSES, exitCodeOf, isErrorCode, type ErrorCode, type ErrorCodeOf } from './errors/registry.js';

export {
  ERRORS,
  ERROR_CLASSES,
  ERROR_MERGES,
  httpStatusOf,
  isErrorCode,
  type ErrorClass,
  type ErrorCode,
  type ErrorCodeOf,
} from './errors/registry.js';

export const ExitCode = {
  ok: 0,
  failure: ERROR_CLASSES.failure.exitCode,
  badInput: ERROR_CLASSES.badInput.exitCode,
  verifyFailed: ERROR_CLASSES.verifyFailed.exitCode,
  missingComponent: ERROR_CLASSES.missingComponent.exitCode,
  notFound: ERROR_CLASSES.notFound.exitCode,
  busy: ERROR_CLASSES.busy.exitCode,
  notImplemented: ERROR_CLASSES.notImplemented.exitCode,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

declare const foreign: unique symbol;
/** A code received from another process or server (maybe of another version), not checked against this registry. */
export type ForeignCode = string & { readonly [foreign]: true };

/** An error as it crosses a process boundary (a socket, a child's IPC, an HTTP body). */
export interface WireError {
  code: string;
  message: string;
  hint?: string | undefined;
  exitCode?: number | undefined;
}

export class RestorelabError extends Error {
  readonly code: ErrorCode | ForeignCode;
  readonly hint: string | undefined;
  readonly exitCode: ExitCode;

  constructor(code: ErrorCode, message: string, opts: { hint?: string | undefined; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'RestorelabError';
    this.code = code;
    this.hint = opts.hint;
    this.exitCode = exitCodeOf(code);
  }

  /**
   * The error another process reported, as this one throws it: the code and
   * exit code as the peer said them (a newer server may send a code this build
   * does not know; scripts still see what it said).
   */
  static revive(e: WireError, opts: { cause?: unknown } = {}): RestorelabError {
    const err = new RestorelabError(isErrorCode(e.code) ? e.code : 'INTERNAL', e.message, { hint: e.hint, cause: opts.cause });
    const exitCode = typeof e.exitCode === 'number' && isExitCode(e.exitCode) ? e.exitCode : ExitCode.failure;
    return Object.assign(err, { code: e.code as ErrorCode | ForeignCode, exitCode });
  }
}

function isExitCode(n: number): n is ExitCode {
  return (Object.values(ExitCode) as number[]).includes(n);
}

export function badInput(code: ErrorCodeOf<'badInput'>, message: string, hint?: string): RestorelabError {
  return new RestorelabError(code, message, { hint });
}

export function notFound(code: ErrorCodeOf<'notFound'>, message: string, hint?: string): RestorelabError {
  return new RestorelabError(code, message, { hint });
}

export function missingComponent(component: string, hint: string): RestorelabError {
  return new RestorelabError('MISSING_COMPONENT', `required system component is missing: ${component}`, { hint });
}

/** Node's system errors carry an errno code; this narrows `unknown` to them. */
export function isErrno(err: unknown, code?: string): err is NodeJS.ErrnoException {
  return (
    err instanceof Error &&
    typeof (err as NodeJS.ErrnoException).code === 'string' &&
    (code === undefined || (err as NodeJS.ErrnoException).code === code)
  );
}
