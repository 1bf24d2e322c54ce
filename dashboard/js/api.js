/* global URLSearchParams, setTimeout -- browser globals: the lint config targets Node, this module runs in the page */
/**
 * The dashboard's only way to the server: every call sends the bearer token
 * from sessionStorage, and every failure becomes an ApiError carrying the
 * server's code, message and hint, which the views show as they are.
 *
 * Images, reports and downloads are fetched too (never put in an <img src>
 * or a link to the API) because a browser sends no Authorization header on
 * its own, and a token must not travel in a URL, where it would end up in
 * logs and history.
 */

export const API_BASE = '/api/v1';
const TOKEN_KEY = 'restorelab.token';

export class ApiError extends Error {
  constructor(status, code, message, hint) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.hint = hint;
  }
}

/** The error a failed response carries: the API's {error:{code,message,hint}} body, or the status line. */
export async function errorFrom(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON: a proxy page or an empty body */
  }
  const e = body && typeof body === 'object' ? body.error : null;
  if (e && typeof e.message === 'string') return new ApiError(res.status, e.code ?? `HTTP_${res.status}`, e.message, e.hint);
  return new ApiError(res.status, `HTTP_${res.status}`, `${res.status} ${res.statusText || 'error'} from the server`);
}

/**
 * fetchImpl and storage are injected so the unit test can run this in Node;
 * the page passes window.fetch and window.sessionStorage. sessionStorage
 * (not localStorage) forgets the token when the tab closes.
 */
export function createApi({ fetch: fetchImpl, storage, base = API_BASE, onUnauthenticated = () => {} }) {
  const token = () => storage.getItem(TOKEN_KEY);

  async function send(method, path, body, accept) {
    const t = token();
    if (!t) {
      onUnauthenticated();
      throw new ApiError(401, 'UNAUTHENTICATED', 'not logged in', 'paste an API token on the login page');
    }
    const headers = { authorization: `Bearer ${t}`, accept };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await fetchImpl(`${base}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    } catch (err) {
      throw new ApiError(0, 'NETWORK', `cannot reach the server: ${err?.message ?? err}`, 'check that restorelab server is running');
    }
    if (!res.ok) {
      const e = await errorFrom(res);
      if (res.status === 401) onUnauthenticated(e);
      throw e;
    }
    return res;
  }

  return {
    token,
    setToken(t) {
      storage.setItem(TOKEN_KEY, t);
    },
    clearToken() {
      storage.removeItem(TOKEN_KEY);
    },

    /** JSON in, JSON out. A 204 gives null. */
    async json(method, path, body) {
      const res = await send(method, path, body, 'application/json');
      if (res.status === 204) return null;
      return res.json();
    },
    get(path) {
      return this.json('GET', path);
    },
    post(path, body = {}) {
      return this.json('POST', path, body);
    },
    del(path) {
      return this.json('DELETE', path);
    },

    /** A binary body (screenshot, tar) and its headers. */
    async blob(path) {
      const res = await send('GET', path, undefined, '*/*');
      return { blob: await res.blob(), type: res.headers.get('content-type'), disposition: res.headers.get('content-disposition') };
    },

    async text(path) {
      const res = await send('GET', path, undefined, 'text/html, text/plain, */*');
      return res.text();
    },

    /**
     * Polls a long operation until it ends; onProgress sees each state.
     * Polling rather than the SSE stream: EventSource cannot send an
     * Authorization header, and a few requests a second are nothing here.
     */
    async waitOperation(id, { onProgress = () => {}, intervalMs = 1000, signal } = {}) {
      for (;;) {
        const op = await this.get(`/operations/${encodeURIComponent(id)}`);
        onProgress(op);
        if (op.state !== 'running') return op;
        if (signal?.aborted) throw new ApiError(0, 'ABORTED', 'stopped following the operation');
        await new Promise((r) => setTimeout(r, intervalMs));
      }
    },
  };
}

/** A path under /api/v1 with its query, skipping empty values. */
export function apiPath(path, query = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** A resource URL the API returned (/api/v1/runs/x) as a path for this client (/runs/x). */
export function relativeToApi(url, base = API_BASE) {
  if (typeof url !== 'string') return null;
  const i = url.indexOf(base);
  return i >= 0 ? url.slice(i + base.length) : url;
}
