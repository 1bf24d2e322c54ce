/**
 * Every API route is declared once, here-style: method, path, the role it
 * needs, the schemas of its body and query. The table registers the route on
 * express with authentication, role check and ajv validation in front of the
 * handler, and the same declarations generate the OpenAPI 3.1 document, so
 * the document cannot drift from what the server enforces.
 */
import type { Request, Response, Router } from 'express';
import type { ValidateFunction } from 'ajv';
import { createAjv, describeErrors, schemaFiles } from '../schema/validate.js';
import { apiError } from './errors.js';
import { roleAllows, type Role, type TokenInfo } from './tokens.js';

export type Method = 'get' | 'post' | 'put' | 'patch' | 'delete';

export interface RouteSpec {
  method: Method;
  /** Express-style path under /api/v1, e.g. `/sessions/:id`. */
  path: string;
  role: Role;
  summary: string;
  tag: string;
  /** Schema file in config/schemas for the JSON body, e.g. `api-recover.schema.json`. */
  body?: string;
  /** Schema file for the query string (validated with type coercion). */
  query?: string;
  /** The success status and what the response is; defaults to 200 JSON. */
  success?: { status: number; description: string; contentType?: string };
  /** The handler; a returned value (not undefined) is sent as JSON with `success.status`. */
  handler: (req: Request, res: Response) => unknown;
}

/** The authenticated token of a request (set by the auth middleware). */
export function principal(res: Response): TokenInfo {
  const p = res.locals.principal as TokenInfo | undefined;
  if (!p) throw apiError('UNAUTHENTICATED');
  return p;
}

/** The validated query of a request (express 5 makes req.query read-only, so it is kept in locals). */
export function queryOf<T>(res: Response): T {
  return (res.locals.query ?? {}) as T;
}

export class RouteTable {
  readonly routes: RouteSpec[] = [];
  private readonly bodyAjv = createAjv();
  private readonly queryAjv = createAjv({ coerceTypes: true });

  add(spec: RouteSpec): void {
    if (this.routes.some((r) => r.method === spec.method && r.path === spec.path))
      throw new Error(`route declared twice: ${spec.method} ${spec.path}`);
    // Fail at start-up, not on the first request, when a schema is missing.
    if (spec.body) this.validator(this.bodyAjv, spec.body);
    if (spec.query) this.validator(this.queryAjv, spec.query);
    this.routes.push(spec);
  }

  private validator(a: ReturnType<typeof createAjv>, id: string): ValidateFunction {
    const v = a.getSchema(id);
    if (!v) throw new Error(`route schema ${id} is not in config/schemas`);
    return v;
  }

  /** Registers every route on `router`, behind `authenticate`. */
  mount(router: Router): void {
    for (const spec of this.routes) {
      const body = spec.body ? this.validator(this.bodyAjv, spec.body) : undefined;
      const query = spec.query ? this.validator(this.queryAjv, spec.query) : undefined;
      router[spec.method](spec.path, async (req: Request, res: Response) => {
        const who = principal(res);
        if (!roleAllows(who.role, spec.role)) {
          throw apiError(
            'FORBIDDEN',
            `token "${who.name}" has role ${who.role}; ${spec.method.toUpperCase()} ${spec.path} needs ${spec.role}`,
          );
        }
        if (body) {
          const hasBody = Number(req.get('content-length') ?? 0) > 0 || req.get('transfer-encoding') !== undefined;
          if (req.body === undefined && hasBody)
            throw apiError(
              'UNSUPPORTED_MEDIA_TYPE',
              `send the body as application/json, not ${req.get('content-type') ?? 'an unnamed type'}`,
            );
          if (req.body === undefined) req.body = {};
          if (req.body !== undefined && !body(req.body)) throw validationError('body', body);
        }
        const q: Record<string, unknown> = { ...(req.query as Record<string, unknown>) };
        if (query) {
          if (!query(q)) throw validationError('query', query);
        } else if (Object.keys(q).length > 0) {
          throw apiError('VALIDATION_FAILED', `query: unknown parameter "${Object.keys(q)[0]}"`, [
            { path: `query/${Object.keys(q)[0]}`, message: 'unknown parameter' },
          ]);
        }
        res.locals.query = q;
        const out = await spec.handler(req, res);
        if (out !== undefined && !res.headersSent) res.status(spec.success?.status ?? 200).json(out);
      });
    }
  }

  /** The OpenAPI 3.1 document of every declared route. */
  openapi(info: { title: string; version: string }): Record<string, unknown> {
    const files = schemaFiles();
    const used = new Set<string>();
    const paths: Record<string, Record<string, unknown>> = {};
    const ref = (id: string): { $ref: string } => {
      used.add(id);
      return { $ref: `#/components/schemas/${componentName(id)}` };
    };
    for (const r of this.routes) {
      const path = r.path.replace(/:(\w+)/g, '{$1}');
      const params: unknown[] = [...r.path.matchAll(/:(\w+)/g)].map((m) => ({
        name: m[1],
        in: 'path',
        required: true,
        schema: { type: 'string' },
      }));
      if (r.query) {
        const qs = files.get(r.query) as { properties?: Record<string, unknown>; required?: string[] } | undefined;
        for (const [name, schema] of Object.entries(qs?.properties ?? {})) {
          params.push({ name, in: 'query', required: (qs?.required ?? []).includes(name), schema });
        }
      }
      const success = r.success ?? { status: 200, description: 'OK' };
      (paths[path] ??= {})[r.method] = {
        summary: r.summary,
        tags: [r.tag],
        operationId: `${r.method}${r.path.replace(/[/:](\w)/g, (_m, c: string) => c.toUpperCase()).replace(/\W/g, '')}`,
        'x-required-role': r.role,
        ...(params.length ? { parameters: params } : {}),
        ...(r.body ? { requestBody: { required: true, content: { 'application/json': { schema: ref(r.body) } } } } : {}),
        responses: {
          [String(success.status)]: {
            description: success.description,
            ...(success.contentType ? { content: { [success.contentType]: {} } } : {}),
          },
          '4XX': { description: 'client error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
          '5XX': { description: 'server error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
        },
      };
    }
    const schemas: Record<string, unknown> = {
      Error: {
        type: 'object',
        required: ['error'],
        properties: {
          error: {
            type: 'object',
            required: ['code', 'message'],
            properties: { code: { type: 'string' }, message: { type: 'string' }, hint: { type: 'string' }, details: {} },
          },
        },
      },
    };
    // Schemas become components; their $defs are hoisted beside them as
    // `<Component>_<def>`, and every `#/$defs/x` or `file.schema.json#/$defs/x`
    // reference is rewritten to point there, so the document resolves on its own.
    const pending = [...used];
    const hoisted = new Set<string>();
    const rewrite = (node: unknown, file: string): unknown => {
      if (Array.isArray(node)) return node.map((n) => rewrite(n, file));
      if (!node || typeof node !== 'object') return node;
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(node as Record<string, unknown>)) {
        if (k === '$ref' && typeof v === 'string') {
          const m = /^([^#]*)#\/\$defs\/(\w+)$/.exec(v);
          if (m) {
            const target = m[1] || file;
            if (!hoisted.has(target) && !pending.includes(target)) pending.push(target);
            out[k] = `#/components/schemas/${componentName(target)}_${m[2] as string}`;
            continue;
          }
          if (files.has(v)) {
            if (!pending.includes(v)) pending.push(v);
            out[k] = `#/components/schemas/${componentName(v)}`;
            continue;
          }
        }
        out[k] = rewrite(v, file);
      }
      return out;
    };
    while (pending.length > 0) {
      const id = pending.shift() as string;
      if (hoisted.has(id)) continue;
      hoisted.add(id);
      const {
        $schema: _s,
        $id: _i,
        $defs,
        ...rest
      } = (files.get(id) ?? {}) as Record<string, unknown> & { $defs?: Record<string, unknown> };
      schemas[componentName(id)] = rewrite(rest, id);
      for (const [name, def] of Object.entries($defs ?? {})) schemas[`${componentName(id)}_${name}`] = rewrite(def, id);
    }
    return {
      openapi: '3.1.0',
      info,
      servers: [{ url: '/api/v1' }],
      security: [{ bearerAuth: [] }],
      paths,
      components: {
        schemas,
        securitySchemes: {
          bearerAuth: { type: 'http', scheme: 'bearer', description: 'a token from: restorelab token create NAME --role ROLE' },
        },
      },
    };
  }
}

function componentName(schemaFile: string): string {
  return schemaFile.replace(/\.schema\.json$/, '').replace(/(^|[-_.])(\w)/g, (_m, _p, c: string) => c.toUpperCase());
}

function validationError(where: 'body' | 'query', v: ValidateFunction): Error {
  const details = (v.errors ?? []).map((e) => ({
    path: `${where}${e.instancePath}${e.keyword === 'additionalProperties' ? `/${String(e.params.additionalProperty)}` : ''}`,
    schemaPath: e.schemaPath,
    message: e.keyword === 'additionalProperties' ? 'unknown property' : (e.message ?? 'is invalid'),
  }));
  const lines = describeErrors(v.errors).map((l) => `${where}${l.startsWith('(top level)') ? l.slice('(top level)'.length) : l}`);
  return apiError('VALIDATION_FAILED', lines.join('; '), details);
}
