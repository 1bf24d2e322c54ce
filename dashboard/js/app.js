/* global clearInterval, document, setInterval, window -- browser globals: the lint config targets Node, this module runs in the page */
/**
 * The dashboard shell: login, navigation and hash routing. Each view module
 * exports render(ctx, route); what it starts (timers, object URLs) it hands to
 * ctx.every / ctx.onCleanup, and the router ends all of it on the next route.
 */
import { createApi } from './api.js';
import { h, replace } from './dom.js';
import { parseHash, roleAllows } from './format.js';
import * as overview from './views/overview.js';
import * as points from './views/points.js';
import * as sessions from './views/sessions.js';
import * as jobs from './views/jobs.js';
import * as run from './views/run.js';
import * as files from './views/files.js';
import * as backupJobs from './views/backup-jobs.js';
import * as workers from './views/workers.js';

const VIEWS = {
  overview: { module: overview, title: 'Overview' },
  points: { module: points, title: 'Restore points' },
  sessions: { module: sessions, title: 'Sessions' },
  'backup-jobs': { module: backupJobs, title: 'Backup jobs' },
  jobs: { module: jobs, title: 'Jobs & runs' },
  runs: { module: run, title: 'Run' },
  files: { module: files, title: 'File restore' },
  workers: { module: workers, title: 'Lab workers' },
};

const $ = (id) => document.getElementById(id);
const main = $('main');
const errorBox = $('error');
const statusBox = $('status');

let who = null;
let current = { cleanups: [] };
/** A message for the next view (e.g. "web is running"), which route() would otherwise clear. */
let pendingNotice = '';

const api = createApi({
  fetch: (...a) => window.fetch(...a),
  storage: window.sessionStorage,
  onUnauthenticated: (e) => {
    // A revoked or expired token: back to the login page, saying why.
    if (who) {
      who = null;
      showLogin(e);
    }
  },
});

function showError(err) {
  if (!err) {
    errorBox.hidden = true;
    errorBox.replaceChildren();
    return;
  }
  replace(
    errorBox,
    h('p', {}, h('strong', {}, 'Error: '), err.message ?? String(err), err.code ? h('code', { class: 'code' }, ` (${err.code})`) : null),
    err.hint ? h('p', { class: 'hint' }, h('strong', {}, 'Hint: '), err.hint) : null,
    h('button', { type: 'button', onclick: () => showError(null) }, 'Dismiss'),
  );
  errorBox.hidden = false;
}

function notify(message) {
  replace(statusBox, message ?? '');
}

function endView() {
  for (const fn of current.cleanups.splice(0)) {
    try {
      fn();
    } catch {
      /* a cleanup must not stop the others */
    }
  }
}

function context() {
  const cleanups = [];
  current = { cleanups };
  const ctx = {
    api,
    who,
    main,
    notify,
    fail: showError,
    can: (role) => roleAllows(who?.role, role),
    navigate: (hash, notice = '') => {
      pendingNotice = notice;
      window.location.hash = hash;
    },
    onCleanup: (fn) => {
      cleanups.push(fn);
    },
    /** Runs fn every ms until the view ends; a failure is shown once, not every tick. */
    every: (ms, fn) => {
      let failing = false;
      const t = setInterval(async () => {
        try {
          await fn();
          failing = false;
        } catch (err) {
          if (!failing) showError(err);
          failing = true;
        }
      }, ms);
      cleanups.push(() => clearInterval(t));
    },
    /** True while this view is still the one on screen (async work checks it before touching the page). */
    live: () => current.cleanups === cleanups,
  };
  return ctx;
}

async function route() {
  if (!who) return;
  endView();
  showError(null);
  notify(pendingNotice);
  pendingNotice = '';
  const r = parseHash(window.location.hash);
  const view = VIEWS[r.view] ?? VIEWS.overview;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === `#/${r.view}` || (r.view === 'runs' && a.getAttribute('href') === '#/jobs'))
      a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${view.title} · restorelab`;
  const ctx = context();
  main.replaceChildren(h('p', { class: 'loading' }, 'Loading…'));
  try {
    await view.module.render(ctx, r);
  } catch (err) {
    if (ctx.live()) {
      main.replaceChildren(h('h2', {}, view.title));
      showError(err);
    }
  }
  main.focus({ preventScroll: true });
}

function showShell() {
  $('nav').hidden = false;
  $('who').hidden = false;
  replace($('who-name'), who.name);
  replace($('who-role'), who.role);
  document.body.dataset.role = who.role;
}

function showLogin(reason) {
  endView();
  api.clearToken();
  who = null;
  $('nav').hidden = true;
  $('who').hidden = true;
  delete document.body.dataset.role;
  document.title = 'Log in · restorelab';
  const input = h('input', {
    id: 'token',
    name: 'token',
    type: 'password',
    autocomplete: 'off',
    required: true,
    spellcheck: 'false',
    'aria-describedby': 'token-help',
  });
  const form = h(
    'form',
    { id: 'login', class: 'login' },
    h('h2', {}, 'Log in'),
    h(
      'p',
      { id: 'token-help' },
      'Paste an API token. Create one on the server with ',
      h('code', {}, 'restorelab token create NAME --role viewer|operator|admin'),
      '. It is kept in this tab only (sessionStorage) and sent as a bearer token.',
    ),
    h('p', {}, h('label', { for: 'token' }, 'API token'), ' ', input),
    h('p', {}, h('button', { type: 'submit' }, 'Log in')),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    api.setToken(input.value.trim());
    try {
      who = await api.get('/whoami');
      showError(null);
      showShell();
      if (!window.location.hash || window.location.hash === '#/login') window.location.hash = '#/overview';
      else await route();
    } catch (err) {
      api.clearToken();
      showError(err);
      input.focus();
    }
  });
  main.replaceChildren(form);
  if (reason) showError(reason);
  input.focus();
}

async function start() {
  $('logout').addEventListener('click', () => {
    notify('Logged out.');
    showLogin();
  });
  window.addEventListener('hashchange', () => {
    void route();
  });
  if (!api.token()) {
    showLogin();
    return;
  }
  try {
    who = await api.get('/whoami');
    showShell();
    await route();
  } catch (err) {
    showLogin(err);
  }
}

void start();
