/**
 * The dashboard end to end, in Debian's headless Chromium driven by
 * playwright-core, against the real API server on 127.0.0.1 (port 0), a real
 * repository holding the `web` test guest, real recoveries (qemu driver, TCG)
 * in a lab of this test's own (its own masquerade subnet, test/helpers/subnets.ts):
 *
 * - a wrong token is refused with the server's message; an operator token logs in;
 * - Recover on the points view → the session runs in Sessions with a console
 *   screenshot that loads → Migrate (a taken target shows the server's error
 *   and hint; then the disks move) → Stop → it leaves the live list, stopped;
 * - Run now on a one-VM job → the run ends → its page shows web's tests, its
 *   screenshot and the HTML report;
 * - File restore: mount the point, browse /etc, download hostname as tar, unmount;
 * - a viewer token sees no Recover or Run buttons;
 * - the points view charts each VM's change rate and entropy (ransomware
 *   signals): a second VM, `worker`, has ordinary points and then one whose
 *   new data is random bytes, marked as the anomaly.
 *
 * Page screenshots are kept in test-artifacts/dashboard/ for a human to look at.
 */
import t from 'tap';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { chromium, type Browser, type Page } from 'playwright-core';
import { loadConfig } from '../../src/config/config.js';
import { startApiServer, type RunningApi } from '../../src/api/server.js';
import { projectPath } from '../../src/paths.js';
import { labDown, listLabs } from '../../src/lab/lab.js';
import { TEST_RULES } from '../helpers/planted-guest.js';
import { listSessions, stopSession } from '../../src/session/recover.js';
import { listPublications } from '../../src/publish/publish.js';
import { guestRepository } from '../helpers/repository.js';
import { backupVm } from '../../src/backup/engine.js';
import { loadVmDefinition } from '../../src/vm/definition.js';
import type { LocalRepository } from '../../src/repo/repository.js';
import { subnet } from '../helpers/subnets.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = projectPath('test-artifacts', 'dashboard');
/** A TCG boot of the web guest takes well under this; the runner's own limits are shorter. */
const BOOT_MS = 240_000;
const RUN_MS = 600_000;
const MASQUERADE = subnet('api/dashboard-e2e');

// A short directory: QEMU's socket paths must stay under 108 bytes.
const dir = mkdtempSync('/tmp/rlde-');
const home = join(dir, 'home');
const jobsDir = join(dir, 'jobs');
const labsDir = join(dir, 'labs');
/** Where the session migrates to: the server's one restore root (api.restoreRoots). */
const prod = join(dir, 'prod');
const labName = `rld${randomBytes(2).toString('hex')}`;
const logs: string[] = [];

let server: RunningApi | undefined;
let browser: Browser | undefined;

t.teardown(async () => {
  await browser?.close().catch(() => undefined);
  const stateDir = server?.ctx.config.stateDir;
  if (stateDir) {
    for (const s of await listSessions(stateDir).catch(() => [])) {
      if (s.state !== 'stopped') await stopSession(stateDir, s.id).catch(() => undefined);
    }
    for (const l of listLabs(stateDir)) await labDown(l.name, { stateDir }).catch(() => undefined);
  }
  await server?.close().catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** The first member of a tar archive (ustar header: name at 0, octal size at 124, data from 512). */
function untarFirst(tar: Buffer): { name: string; content: string } {
  const name = tar.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
  const size = parseInt(tar.subarray(124, 136).toString('ascii').replace(/\0.*$/s, '').trim(), 8);
  return { name, content: tar.subarray(512, 512 + size).toString('utf8') };
}

/**
 * Points of a VM `worker` beside web's: three nights whose new data is log
 * text, then one whose new data is random (as encrypted files are). Its name
 * sorts after web, so web stays the first VM of every list the other steps use.
 */
async function workerPoints(repo: LocalRepository): Promise<string> {
  const vmFile = join(dir, 'worker.json');
  writeFileSync(vmFile, JSON.stringify({ name: 'worker', memoryMiB: 256, vcpus: 1, disks: [{ name: 'root', format: 'raw' }], nics: [] }));
  const vm = loadVmDefinition(vmFile);
  const image = join(dir, 'worker.raw');
  const MiB = 1024 * 1024;
  const log = (night: number, mib: number): Buffer => {
    const lines = Buffer.from(Array.from({ length: 4096 }, (_, i) => `night ${night} GET /${i % 97} 200\n`).join(''));
    return Buffer.alloc(mib * MiB, lines);
  };
  const disk = Buffer.alloc(64 * MiB);
  log(0, 24).copy(disk, 0);
  let last = '';
  for (let night = 0; night < 4; night++) {
    if (night > 0 && night < 3) log(night, 2).copy(disk, (24 + 2 * night) * MiB);
    if (night === 3) randomBytes(24 * MiB).copy(disk, 0);
    writeFileSync(image, disk);
    last = (await backupVm({ repo, vm, disks: { root: image } })).id;
  }
  return last;
}

async function login(page: Page, url: string, token: string): Promise<void> {
  await page.goto(`${url}/`);
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#nav').waitFor({ state: 'visible' });
}

t.test('dashboard in headless Chromium: login, recover/stop web, a job run with its report', async (t) => {
  // Not a skip: without the browser this test cannot show anything, so it fails and says what to install.
  if (!existsSync(CHROMIUM)) {
    t.fail(`${CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium; scripts/setup installs it)`);
    return;
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  mkdirSync(jobsDir, { recursive: true });
  mkdirSync(labsDir, { recursive: true });
  const { repo, repository } = await guestRepository(dir, 'web');
  const workerAnomaly = await workerPoints(repository);

  // The lab template the server offers (labs are named, never given as paths), and a one-VM job using it.
  const labFile = join(labsDir, `${labName}.json`);
  writeFileSync(
    labFile,
    JSON.stringify({
      name: labName,
      allowInternet: false,
      networks: [{ name: 'prod', subnet: '192.168.77.0/24', gateway: '192.168.77.1', masquerade: MASQUERADE }],
    }),
  );
  process.env.RESTORELAB_LABS_DIR = labsDir;
  writeFileSync(
    join(jobsDir, 'dash-web.json'),
    JSON.stringify({
      name: 'dash-web',
      lab: labFile,
      point: 'latest',
      concurrency: 1,
      verify: { vms: ['web'], role: 'web', maxBootSeconds: 180, appInitSeconds: 60 },
    }),
  );

  const config = loadConfig({ env: { RESTORELAB_HOME: home, RESTORELAB_REPO: repo, RESTORELAB_DRIVER: 'qemu', RESTORELAB_ACCEL: 'tcg' } });
  mkdirSync(prod, { recursive: true });
  config.api.restoreRoots = [prod];
  server = await startApiServer({
    config,
    jobsDir,
    port: 0,
    listen: '127.0.0.1',
    log: pino(
      { level: 'info' },
      {
        write: (l: string) => {
          logs.push(l);
        },
      },
    ),
  });
  const { url, ctx } = server;
  const stateDir = config.stateDir;
  const operator = (await ctx.tokens.create('e2e-operator', 'operator')).token;
  const viewer = (await ctx.tokens.create('e2e-viewer', 'viewer')).token;

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));

  await t.test("a wrong token is refused with the server's message", async (t) => {
    await page.goto(`${url}/`);
    await page.getByLabel('API token').fill(`rl_0123456789ab_${'A'.repeat(43)}`);
    await page.getByRole('button', { name: 'Log in' }).click();
    const err = page.locator('#error');
    await err.waitFor({ state: 'visible' });
    t.match(await err.textContent(), /not valid/, "the API's message is shown");
    t.ok(await page.locator('#nav').isHidden(), 'no navigation without a valid token');
    await shot(page, '01-login-refused');
  });

  await t.test('an operator logs in and sees the overview', async (t) => {
    await login(page, url, operator);
    t.equal(await page.locator('#who-name').textContent(), 'e2e-operator');
    t.equal(await page.locator('#who-role').textContent(), 'operator');
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await page.getByRole('table', { name: 'Latest verification per VM' }).getByRole('link', { name: 'web' }).waitFor();
    await shot(page, '02-overview');
  });

  await t.test("the points view charts each VM's change rate and entropy; worker's encrypted night is the anomaly", async (t) => {
    await page.getByRole('link', { name: 'Restore points' }).click();
    const chart = page.getByRole('img', { name: /^Change rate and entropy of worker/ });
    await chart.waitFor();
    t.equal(await chart.getAttribute('aria-label'), 'Change rate and entropy of worker: 4 points, 1 anomaly');
    t.equal(await chart.locator('circle.anomaly').count(), 2, 'both lines mark the anomalous point');
    t.same(await chart.locator('circle.anomaly').evaluateAll((els) => els.map((e) => e.getAttribute('data-point'))), [
      workerAnomaly,
      workerAnomaly,
    ]);
    t.match(
      await chart.locator('circle.anomaly title').first().textContent(),
      /ANOMALY: 100\.0 % of the new data is incompressible/,
      'its tooltip says why',
    );
    t.equal(
      await page.getByRole('img', { name: /^Change rate and entropy of web/ }).getAttribute('aria-label'),
      'Change rate and entropy of web: 1 point, 0 anomalies',
    );
    const rows = page.getByRole('table', { name: 'Restore points of worker' }).locator('[data-anomaly]');
    t.same(
      await rows.evaluateAll((els) => els.map((e) => e.getAttribute('data-anomaly'))),
      ['true', 'false', 'false', 'false'],
      'newest first: only the newest row is an anomaly',
    );
    t.match(await rows.first().textContent(), /100\.0% of new data incompressible anomaly/);
    t.match(
      await page.getByRole('table', { name: 'Restore points of web' }).textContent(),
      /full backup/,
      "web's one point is its full backup",
    );
    await chart.scrollIntoViewIfNeeded();
    await shot(page, '02b-points-signals');
  });

  let sessionId = '';
  await t.test('Recover web from the points view; it runs in Sessions with a console screenshot', async (t) => {
    await page.getByRole('link', { name: 'Restore points' }).click();
    const recover = page.locator('button[data-vm="web"]').first();
    await recover.waitFor();
    t.equal(
      await page.getByRole('table', { name: 'Restore points of web' }).getByText('not verified').count(),
      1,
      'the point is not verified yet',
    );
    await page.getByLabel('Lab').selectOption(labName);
    // Behind the recovery gate: the rules match nothing of web, so it comes up (and the card says clean).
    await page.getByLabel('YARA rules (optional)').fill(TEST_RULES);
    await shot(page, '03-points');
    await recover.click();
    await page.waitForURL(/#\/sessions$/, { timeout: BOOT_MS });
    const card = page.locator('article[data-vm="web"]');
    await card.locator('[data-state="running"]').waitFor({ timeout: 30_000 });
    sessionId = (await card.getAttribute('data-session')) ?? '';
    t.match(await page.locator('#status').textContent(), /web is running from its backup/, 'the status line says so');
    t.ok(sessionId, `session ${sessionId}`);
    const img = card.getByRole('img', { name: /Console of web/ });
    await img.waitFor({ state: 'visible', timeout: 60_000 });
    await page.waitForFunction(
      (el) => (el as HTMLImageElement).complete && (el as HTMLImageElement).naturalWidth > 0,
      await img.elementHandle(),
      { timeout: 60_000 },
    );
    const width = await img.evaluate((el) => (el as HTMLImageElement).naturalWidth);
    t.ok(width > 0, `the console screenshot loaded (${width} px wide)`);
    t.match(await img.getAttribute('src'), /^blob:/, 'fetched with the token, shown from a blob URL');
    // It refreshes: a new object URL replaces the first (and the old one is revoked).
    const first = await img.getAttribute('src');
    await page.waitForFunction(([el, prev]) => (el as HTMLImageElement).src !== prev, [await img.elementHandle(), first] as const, {
      timeout: 20_000,
    });
    t.pass('the screenshot refreshed');
    const listed = (await listSessions(stateDir)).find((s) => s.id === sessionId);
    t.equal(listed?.state, 'running', 'the server agrees it runs');
    t.equal(listed?.lab, labName, "in the test's lab");
    t.equal(listed?.scan?.verdict, 'clean', 'scanned first, with the rules of the form');
    t.equal(await card.locator('[data-scan="clean"]').count(), 1, 'the card shows the scan verdict');
    await shot(page, '04-session-running');
  });

  await t.test('Migrate: a taken target is refused with message and hint; then the disks move and the VM keeps running', async (t) => {
    if (!sessionId) {
      t.fail('no session to migrate: the recovery above failed');
      return;
    }
    writeFileSync(join(prod, 'web-root.raw'), 'taken');
    const card = page.locator(`article[data-session="${sessionId}"]`);
    await card.getByLabel('Target directory').fill(prod);
    await card.getByLabel('Format').selectOption('raw');
    await card.getByRole('button', { name: 'Migrate' }).click();
    const err = page.locator('#error');
    await err.waitFor({ state: 'visible', timeout: 60_000 });
    t.match(await err.textContent(), /already exists/, "the server's message");
    t.match(await err.locator('.hint').textContent(), /Hint: remove it or pick another/, 'and its hint');
    await shot(page, '05-migrate-refused');
    await err.getByRole('button', { name: 'Dismiss' }).click();
    await card.getByLabel('Format').selectOption('qcow2');
    await card.getByRole('button', { name: 'Migrate' }).click();
    await card.locator('[data-state="migrated"]').waitFor({ timeout: 180_000 });
    t.ok(existsSync(join(prod, 'web-root.qcow2')), 'the disk is in the target directory');
    t.match(await card.textContent(), new RegExp(`Migrated to${prod}`), 'the card says where');
    const img = card.getByRole('img', { name: /Console of web/ });
    await page.waitForFunction((el) => (el as HTMLImageElement).naturalWidth > 0, await img.elementHandle(), { timeout: 30_000 });
    t.pass('still running, with its screen');
    await shot(page, '06-session-migrated');
  });

  await t.test('Stop: the session leaves the live list and is listed stopped', async (t) => {
    if (!sessionId) {
      t.fail('no session to stop: the recovery above failed');
      return;
    }
    const card = page.locator(`article[data-session="${sessionId}"]`);
    await card.getByRole('button', { name: /^Stop session/ }).click();
    await card.waitFor({ state: 'detached', timeout: 120_000 });
    const ended = page.getByRole('table', { name: 'Ended sessions' });
    await ended.locator('[data-state="stopped"]').first().waitFor({ timeout: 30_000 });
    t.match(await ended.textContent(), /web/);
    t.equal((await listSessions(stateDir)).find((s) => s.id === sessionId)?.state, 'stopped');
    t.same(
      listPublications(stateDir).filter((p) => p.running),
      [],
      'its publication is gone',
    );
    await shot(page, '07-session-stopped');
  });

  await t.test("Run now on a job; the run page shows web's tests, screenshot and report", async (t) => {
    await page.getByRole('link', { name: 'Jobs & runs' }).click();
    await page.getByRole('button', { name: 'Run job dash-web now' }).click();
    // The runs list refreshes on its own; the run appears, then ends.
    const row = page.getByRole('table', { name: 'Recent runs' }).getByRole('row').filter({ hasText: 'dash-web' }).first();
    await row.waitFor({ timeout: 30_000 });
    await shot(page, '08-job-running');
    await row.locator('[data-status]:not([data-status="running"])').waitFor({ timeout: RUN_MS });
    const status = await row.locator('[data-status]').getAttribute('data-status');
    t.equal(status, 'success', 'the run of web passed');
    await row.getByRole('link').first().click();
    await page.waitForURL(/#\/runs\//);
    const vm = page.locator('section.run-vm[data-vm="web"]');
    await vm.waitFor();
    t.equal(await vm.locator('h3 [data-result]').getAttribute('data-result'), 'success');
    const tests = vm.getByRole('table', { name: 'Tests of web' });
    const kinds = await tests.locator('tbody tr td:nth-child(2)').allTextContents();
    t.same(kinds, ['heartbeat', 'ping', 'tcp', 'http', 'screenshot', 'integrity'], 'every test of the web role is listed');
    t.equal(await tests.getByText('passed').count(), kinds.length, 'all passed');
    const img = vm.getByRole('img', { name: /Console of web during run/ });
    await img.waitFor({ state: 'visible', timeout: 30_000 });
    await page.waitForFunction(
      (el) => (el as HTMLImageElement).complete && (el as HTMLImageElement).naturalWidth > 0,
      await img.elementHandle(),
      { timeout: 30_000 },
    );
    t.ok((await img.evaluate((el) => (el as HTMLImageElement).naturalWidth)) > 0, "the run's screenshot loaded");
    const report = page.frameLocator('#report-frame');
    const heading = report.getByRole('heading', { name: /SureBackup job dash-web: success/ });
    await heading.waitFor({ timeout: 30_000 });
    t.pass('the HTML report is shown, with the job and its verdict');
    t.match(await report.locator('body').textContent(), /web/, 'naming web');
    t.equal(await page.locator('#report-frame').getAttribute('sandbox'), '', 'in a sandbox without scripts');
    await shot(page, '09-run');
    await page.locator('#report-frame').scrollIntoViewIfNeeded();
    await page.locator('#report-frame').screenshot({ path: join(ARTIFACTS, '09-run-report-frame.png') });
  });

  await t.test('File restore: mount the point, browse /etc, download hostname as tar, unmount', async (t) => {
    await page.getByRole('link', { name: 'File restore' }).click();
    await page.getByLabel('Restore point').waitFor();
    await page.getByRole('button', { name: 'Mount' }).click();
    await page.getByRole('table', { name: 'Contents of /' }).waitFor({ timeout: 60_000 });
    await page.getByRole('button', { name: 'Open directory etc' }).click();
    await page.getByRole('table', { name: 'Contents of /etc' }).waitFor();
    await shot(page, '10-file-restore');
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.getByRole('button', { name: 'Download /etc/hostname' }).click(),
    ]);
    t.equal(download.suggestedFilename(), 'hostname.tar', 'named after the file');
    const tar = readFileSync(await download.path());
    const entry = untarFirst(tar);
    t.equal(entry.name, 'hostname');
    t.equal(entry.content, 'web\n', "the guest's /etc/hostname, from the backup");
    await page.getByRole('button', { name: 'Unmount' }).first().click();
    await page.getByText('Mounted restore points: none.').waitFor({ timeout: 60_000 });
    t.same(
      (await (await fetch(`${url}/api/v1/file-restore`, { headers: { authorization: `Bearer ${operator}` } })).json()).sessions,
      [],
      'nothing stays mounted',
    );
  });

  await t.test('a viewer sees the same pages without Recover or Run buttons', async (t) => {
    const vpage = await browser!.newPage({ viewport: { width: 1280, height: 900 } });
    vpage.on('pageerror', (e) => pageErrors.push(e.message));
    await login(vpage, url, viewer);
    await vpage.goto(`${url}/#/points`);
    await vpage.getByRole('table', { name: 'Restore points of web' }).waitFor();
    t.equal(await vpage.getByRole('button', { name: /^Recover/ }).count(), 0, 'no Recover button');
    t.match(await vpage.locator('.role-note').textContent(), /viewer/);
    const verified = vpage.getByRole('table', { name: 'Restore points of web' }).locator('.badge');
    t.equal(await verified.first().textContent(), 'success', 'the point now shows its verification');
    await vpage.goto(`${url}/#/jobs`);
    await vpage.getByRole('table', { name: 'SureBackup jobs' }).waitFor();
    t.equal(await vpage.getByRole('button', { name: /Run job/ }).count(), 0, 'no Run now button');
    await shot(vpage, '11-viewer-points');
    await vpage.getByRole('button', { name: 'Log out' }).click();
    await vpage.getByLabel('API token').waitFor();
    t.equal(await vpage.evaluate(() => window.sessionStorage.length), 0, 'logout forgets the token');
    await vpage.close();
  });

  t.same(pageErrors, [], 'no uncaught error in the page');
  t.notMatch(logs.join(''), new RegExp(operator.slice(-20)), 'the token never appears in the server log');
  t.same(
    (await listSessions(stateDir)).filter((s) => s.state !== 'stopped').map((s) => s.id),
    [],
    'no session left running',
  );
});
