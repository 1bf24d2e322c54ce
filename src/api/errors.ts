/**
 * The API's errors. Every code is in the one error registry
 * (src/errors/registry.ts, docs/errors.md), which gives its HTTP status; the
 * codes below are the ones the HTTP layer itself sends, with the registry's
 * explanation as their default message (docs/api.md documents them; a test
 * checks this). Domain errors (RestorelabError) keep their own code and status.
 */
import { ERROR_CLASSES, ERRORS, httpStatusOf, isErrorCode, RestorelabError, type ErrorCode } from '../errors.js';

export interface ApiErrorSpec {
  status: number;
  message: string;
}

const API_CODES = [
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'RATE_LIMITED',
  'MALFORMED_JSON',
  'VALIDATION_FAILED',
  'BODY_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  'ROUTE_NOT_FOUND',
  'NOT_FOUND',
  'CONFLICT',
  'PATH_TRAVERSAL',
  'PATH_NOT_ALLOWED',
  'SCRIPT_NOT_ALLOWED',
  'OPERATION_CANCELLED',
  'OPERATION_NOT_CANCELLABLE',
  'MISSING_COMPONENT',
  'DOMAIN_ERROR',
  'INTERNAL',
] as const satisfies readonly ErrorCode[];

export type ApiErrorCode = (typeof API_CODES)[number];

export const API_ERRORS: Readonly<Record<ApiErrorCode, ApiErrorSpec>> = Object.fromEntries(
  API_CODES.map((c) => [c, { status: httpStatusOf(c), message: ERRORS[c].explain }]),
) as Record<ApiErrorCode, ApiErrorSpec>;

/** An error with an HTTP status, as the error middleware sends it. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    readonly status: number,
    message: string,
    readonly details?: unknown,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export function apiError(code: ApiErrorCode, message?: string, details?: unknown, hint?: string): ApiError {
  const spec = API_ERRORS[code];
  return new ApiError(code, spec.status, message ?? spec.message, details, hint);
}

/** Any thrown value as the ApiError the client sees. Unknown errors become INTERNAL (logged by the caller). */
export function toApiError(err: unknown): { error: ApiError; internal: boolean } {
  if (err instanceof ApiError) return { error: err, internal: false };
  if (err instanceof RestorelabError) {
    // A code from another process this build does not know keeps the status of its exit code's class.
    const status = isErrorCode(err.code)
      ? httpStatusOf(err.code)
      : (Object.values(ERROR_CLASSES).find((c) => c.exitCode === err.exitCode)?.status ?? 500);
    return { error: new ApiError(err.code, status, err.message, undefined, err.hint), internal: false };
  }
  return { error: apiError('INTERNAL'), internal: true };
}

/** The body of every error response. */
export function errorBody(e: ApiError): { error: { code: string; message: string; hint?: string; details?: unknown } } {
  return {
    error: {
      code: e.code,
      message: e.message,
      ...(e.hint ? { hint: e.hint } : {}),
      ...(e.details !== undefined ? { details: e.details } : {}),
    },
  };
}
