/**
 * Path parameters of the lab-side routes. Express hands them over unchecked,
 * and several name files (a job is `<jobsDir>/<name>.json`, a lab template is
 * looked up by name), so each is held to the same pattern the schemas use
 * for names before it reaches a path: no `/`, no `..`.
 */
import type { Request } from 'express';
import { apiError } from '../errors.js';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** The path parameter `key`, refused with a 400 naming it when it is not a plain name. */
export function nameParam(req: Request, key: string): string {
  const v = String(req.params[key] ?? '');
  if (!NAME.test(v) || v.includes('..')) {
    throw apiError('VALIDATION_FAILED', `params/${key}: "${v}" is not a name (letters, digits, '.', '_', '-'; no leading '.' or '..')`, [
      { path: `params/${key}`, message: 'must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' },
    ]);
  }
  return v;
}
