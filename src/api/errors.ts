/**
 * The API's one error registry. Every error the API sends has a stable code,
 * an HTTP status and a default message; docs/api.md documents every code (a
 * test checks this). Domain errors (RestorelabError) keep their own code and
 * are mapped to a status by their class (bad input → 400, not found → 404...).
 */
import { ExitCode, RestorelabError } from '../errors.js';

export interface ApiErrorSpec { status: number; message: string }

export const API_ERRORS = {
  UNAUTHENTICATED: { status: 401, message: 'a valid bearer token is required' },
  FORBIDDEN: { status: 403, message: 'this token\'s role may not do this' },
  RATE_LIMITED: { status: 429, message: 'too many failed authentication attempts; wait and retry' },
  MALFORMED_JSON: { status: 400, message: 'the request body is not valid JSON' },
  VALIDATION_FAILED: { status: 400, message: 'the request does not match its schema' },
  BODY_TOO_LARGE: { status: 413, message: 'the request body is too large' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'send the body as application/json' },
  ROUTE_NOT_FOUND: { status: 404, message: 'no such route' },
  NOT_FOUND: { status: 404, message: 'no such resource' },
  CONFLICT: { status: 409, message: 'the resource is busy or already exists' },
  PATH_TRAVERSAL: { status: 400, message: 'the path leaves the guest filesystem' },
  PATH_NOT_ALLOWED: { status: 403, message: 'the host path is outside the directories the server allows for this (config api.sourceRoots, api.restoreRoots, api.mountRoots, api.repositoryRoots)' },
  SCRIPT_NOT_ALLOWED: { status: 403, message: 'a job script is outside the server\'s scripts directory (config api.scriptsDir)' },
  OPERATION_CANCELLED: { status: 409, message: 'the operation was cancelled before it finished' },
  OPERATION_NOT_CANCELLABLE: { status: 409, message: 'the operation has already ended' },
  MISSING_COMPONENT: { status: 503, message: 'a required system component is missing on the server' },
  DOMAIN_ERROR: { status: 500, message: 'the operation failed' },
  INTERNAL: { status: 500, message: 'internal error; the server log has the details' },
} as const satisfies Record<string, ApiErrorSpec>;

export type ApiErrorCode = keyof typeof API_ERRORS;

/** The status a domain error's class maps to. */
const STATUS_BY_EXIT: Record<ExitCode, number> = {
  [ExitCode.ok]: 200,
  [ExitCode.failure]: 500,
  [ExitCode.badInput]: 400,
  [ExitCode.verifyFailed]: 422,
  [ExitCode.missingComponent]: 503,
  [ExitCode.notFound]: 404,
  [ExitCode.busy]: 409,
  [ExitCode.notImplemented]: 501,
};

/** An error with an HTTP status, as the error middleware sends it. */
export class ApiError extends Error {
  constructor(readonly code: string, readonly status: number, message: string, readonly details?: unknown, readonly hint?: string) {
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
    const status = STATUS_BY_EXIT[err.exitCode] ?? 500;
    return { error: new ApiError(err.code, status, err.message, undefined, err.hint), internal: false };
  }
  return { error: apiError('INTERNAL'), internal: true };
}

/** The body of every error response. */
export function errorBody(e: ApiError): { error: { code: string; message: string; hint?: string; details?: unknown } } {
  return { error: { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}), ...(e.details !== undefined ? { details: e.details } : {}) } };
}
