// End-to-end tests of the dashboard and the browser SDK in headless Chromium.
//
// Run by `cargo test` (tests/browser.rs), which installs Chromium and playwright-core when they
// are missing and passes the broker binary in CPOD_BIN. This script starts the broker on a free
// port with a temporary database, kills and restarts it for the reconnect test, and stops at
// the first failing scenario with its error, the page's console and a screenshot.
//
//   CPOD_BIN=../../target/debug/cpod-events node dashboard.test.mjs

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.CPOD_BIN;
const CHROMIUM = process.env.CPOD_CHROMIUM || '/usr/bin/chromium';
const SCREENSHOTS = process.env.CPOD_SCREENSHOT_DIR || path.join(HERE, '../../target/screenshots');
const ADMIN_KEY = 'cpk_browser_test_admin_key_0123456789abcdefgh';
const ORG = 'org-dashboard-test';

if (!BIN) {
  console.error('CPOD_BIN must name the cpod-events binary');
  process.exit(2);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A real broker process on a fixed port, so that a restart keeps the page's origin. */
class Broker {
  constructor(dir, port) {
    this.dir = dir;
    this.port = port;
    this.base = `http://127.0.0.1:${port}`;
    this.child = null;
    this.starts = 0;
  }

  async start(extraEnv = {}) {
    const log = fs.openSync(path.join(this.dir, `broker-${this.starts++}.log`), 'w');
    this.child = spawn(BIN, [], {
      env: {
        PATH: process.env.PATH,
        CPOD_LISTEN: `127.0.0.1:${this.port}`,
        CPOD_DATABASE_URL: `sqlite://${path.join(this.dir, 'events.db')}`,
        CPOD_ADMIN_KEY: ADMIN_KEY,
        CPOD_WEBHOOK_ALLOW_PRIVATE: 'true',
        CPOD_HEARTBEAT: '2s',
        CPOD_WORKERS: '2',
        ...extraEnv,
      },
      stdio: ['ignore', log, log],
    });
    const child = this.child;
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`the broker exited with ${child.exitCode}; see ${this.dir}`);
      try {
        if ((await fetch(`${this.base}/healthz`)).ok) return;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error('the broker did not answer /healthz within 30 s');
  }

  async stop(signal = 'SIGTERM') {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await Promise.race([exited, sleep(15000).then(() => child.kill('SIGKILL'))]);
    await exited;
  }
}

/** A webhook receiver on localhost that answers 200 and remembers every request. */
function startReceiver() {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      requests.push({ headers: req.headers, body });
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('ok');
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, requests, url: `http://127.0.0.1:${server.address().port}/hook` }));
  });
}

async function waitFor(what, check, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await sleep(100);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
}

// ------------------------------------------------------------------------------------------

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpod-browser-'));
const broker = new Broker(dir, await freePort());
const base = broker.base;
// A broker must never outlive this script, however it ends (Chromium is ended by Playwright).
process.on('exit', () => {
  if (broker.child && broker.child.exitCode === null) broker.child.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(1));

async function api(key, method, urlPath, body) {
  const response = await fetch(`${base}${urlPath}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function emit(key, event) {
  const answer = await api(key, 'POST', '/v1/events', event);
  assert.equal(answer.status, 201, JSON.stringify(answer.body));
  return answer.body;
}

const started = Date.now();
let browser;
let page;
const consoleLines = [];
const externalRequests = [];
const streamUrls = [];
const results = [];

async function step(name, body) {
  const t0 = Date.now();
  try {
    await body();
    results.push(`ok   ${name} (${Date.now() - t0} ms)`);
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (error) {
    console.log(`FAIL ${name}\n${error && error.stack ? error.stack : error}`);
    if (page) {
      fs.mkdirSync(SCREENSHOTS, { recursive: true });
      const shot = path.join(SCREENSHOTS, 'failure.png');
      await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
      console.log(`screenshot of the failure: ${shot}`);
    }
    console.log(`page console:\n${consoleLines.join('\n')}`);
    console.log(`broker logs: ${dir}`);
    await shutdown();
    process.exit(1);
  }
}

async function shutdown() {
  if (browser) await browser.close().catch(() => {});
  await broker.stop().catch(() => {});
}

function watch(p) {
  p.on('console', (message) => consoleLines.push(`[${message.type()}] ${message.text()}`));
  p.on('pageerror', (error) => consoleLines.push(`[pageerror] ${error.message}`));
  p.on('request', (request) => {
    const url = request.url();
    if (url.startsWith('data:') || url.startsWith('blob:')) return;
    if (new URL(url).origin !== base) externalRequests.push(url);
    if (url.includes('/v1/events/stream')) streamUrls.push(url);
  });
}

/** The ids of the live rows, newest first. */
const liveIds = (p = page) => p.$$eval('#live-events li.event', (rows) => rows.map((r) => r.dataset.id));
const pageErrors = () => consoleLines.filter((l) => l.startsWith('[pageerror]'));

async function signIn(p, key) {
  await p.fill('#api-key', key);
  await p.click('#sign-in-form button[type=submit]');
}

async function expectConnection(state, timeout = 10000) {
  await page.waitForFunction((s) => document.getElementById('connection').dataset.state === s, state, { timeout });
}

console.log(`starting the broker and Chromium`);
await broker.start();
const receiver = await startReceiver();
const serviceKey = (await api(ADMIN_KEY, 'POST', '/v1/keys', { organizationId: ORG, role: 'service', name: 'platform' })).body.key;
assert.ok(serviceKey && serviceKey.startsWith('cpk_'), 'a service key is made');

browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, acceptDownloads: true });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
page = await context.newPage();
watch(page);

await step('the page is served with a same-origin-only Content-Security-Policy', async () => {
  const response = await page.goto(`${base}/`);
  assert.equal(response.status(), 200);
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /connect-src 'self'/);
  await page.waitForSelector('#sign-in:not([hidden])');
});

await step('a bad key is refused with a clear message', async () => {
  await signIn(page, 'cpk_this_key_does_not_exist_0123456789abcdef');
  await page.waitForSelector('#message:not([hidden])');
  assert.match(await page.textContent('#message-text'), /not accepted/);
  assert.equal(await page.isVisible('#sign-in'), true);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cpod.apiKey')), null);
});

await step('signing in shows the organization and the role; the key stays out of the URL', async () => {
  await signIn(page, serviceKey);
  await page.waitForSelector('#identity:not([hidden])');
  assert.equal(await page.textContent('#identity-org'), ORG);
  assert.equal(await page.textContent('#identity-role'), 'service');
  assert.equal(await page.isVisible('#message'), false);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cpod.apiKey')), serviceKey);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  await expectConnection('live');
  assert.ok(!page.url().includes(serviceKey));
  assert.ok(streamUrls.length > 0 && streamUrls.every((u) => !u.includes(serviceKey) && u.includes('ticket=cpt_')), streamUrls.join('\n'));
});

await step('an event POSTed by the test appears in the live view within 5 seconds', async () => {
  const event = await emit(serviceKey, {
    type: 'pod.failed', resourceId: 'pod-7f9c', resourceType: 'pod', workspaceId: 'ws-42', payload: { exitCode: 137, reason: 'OOMKilled' },
  });
  const row = await page.waitForSelector(`#live-events li[data-id="${event.id}"]`, { timeout: 5000 });
  const text = await row.textContent();
  for (const part of ['pod.failed', 'pod/pod-7f9c', 'ws-42']) assert.ok(text.includes(part), `${part} in ${text}`);
  assert.deepEqual((await liveIds())[0], event.id);
});

await step('a server-side filter hides events that do not match', async () => {
  const before = streamUrls.length;
  await page.fill('#live-filters input[name=types]', 'pod.*');
  await page.fill('#live-filters input[name=resourceType]', 'pod');
  await page.click('#live-filters button[type=submit]');
  await expectConnection('live');
  const url = new URL(streamUrls.slice(before).pop());
  assert.equal(url.searchParams.get('types'), 'pod.*', 'the types filter is applied by the broker');
  assert.equal(url.searchParams.get('resourceType'), 'pod');
  const hidden = await emit(serviceKey, { type: 'custom.deploy.done', resourceId: 'deploy-1', resourceType: 'deploy' });
  const otherResource = await emit(serviceKey, { type: 'pod.started', resourceId: 'x-1', resourceType: 'vm' });
  const shown = await emit(serviceKey, { type: 'pod.started', resourceId: 'pod-1', resourceType: 'pod' });
  await page.waitForSelector(`#live-events li[data-id="${shown.id}"]`, { timeout: 5000 });
  const ids = await liveIds();
  assert.ok(!ids.includes(hidden.id), 'a custom event is hidden by types=pod.*');
  assert.ok(!ids.includes(otherResource.id), 'another resource type is hidden');
  for (const type of await page.$$eval('#live-events li.event', (rows) => rows.map((r) => r.dataset.type))) {
    assert.match(type, /^pod\./);
  }
  await page.fill('#live-filters input[name=types]', '');
  await page.fill('#live-filters input[name=resourceType]', '');
  await page.click('#live-filters button[type=submit]');
  await expectConnection('live');
});

await step('pause, POST, resume shows the missed events in order', async () => {
  await page.click('#pause');
  await expectConnection('paused');
  assert.equal(await page.getAttribute('#pause', 'aria-pressed'), 'true');
  const missed = [];
  for (let i = 1; i <= 3; i += 1) {
    missed.push((await emit(serviceKey, { type: 'job.completed', resourceId: `job-${i}`, resourceType: 'job' })).id);
  }
  await sleep(1000);
  const whilePaused = await liveIds();
  for (const id of missed) assert.ok(!whilePaused.includes(id), 'nothing arrives while paused');
  await page.click('#pause');
  await page.waitForSelector(`#live-events li[data-id="${missed[2]}"]`, { timeout: 5000 });
  const ids = await liveIds();
  assert.deepEqual(ids.slice(0, 3), [...missed].reverse(), 'newest first, none missing');
  assert.deepEqual(ids.slice(3), whilePaused, 'the rows before the pause are kept, no duplicate');
  await expectConnection('live');
});

await step('live view: a start that is overtaken (Apply twice, sign-out) while history loads changes nothing', async () => {
  // The history request of the live view (limit=1000) of the next start is held for 1.5 s.
  let hold = 0;
  const isLiveHistory = (url) => url.pathname === '/v1/events' && url.searchParams.get('limit') === '1000';
  await page.route(isLiveHistory, async (route) => {
    if (hold > 0) {
      hold -= 1;
      await sleep(1500);
    }
    await route.continue().catch(() => {});
  });
  try {
    const a = await emit(serviceKey, { type: 'custom.racea.one', resourceId: 'ra-1', resourceType: 'race' });
    const b = await emit(serviceKey, { type: 'custom.raceb.one', resourceId: 'rb-1', resourceType: 'race' });
    hold = 1;
    await page.fill('#live-filters input[name=types]', 'custom.racea.*');
    await page.click('#live-filters button[type=submit]');
    await page.fill('#live-filters input[name=types]', 'custom.raceb.*');
    await page.click('#live-filters button[type=submit]');
    await page.waitForSelector(`#live-events li[data-id="${b.id}"]`, { timeout: 5000 });
    await sleep(2000); // the held request of the first Apply has been answered by now
    await expectConnection('live');
    assert.deepEqual(await liveIds(), [b.id], `the first Apply added nothing (not ${a.id})`);
    const lastStream = streamUrls[streamUrls.length - 1];
    assert.equal(new URL(lastStream).searchParams.get('types'), 'custom.raceb.*', lastStream);
    const a2 = await emit(serviceKey, { type: 'custom.racea.two', resourceId: 'ra-2', resourceType: 'race' });
    const b2 = await emit(serviceKey, { type: 'custom.raceb.two', resourceId: 'rb-2', resourceType: 'race' });
    await page.waitForSelector(`#live-events li[data-id="${b2.id}"]`, { timeout: 5000 });
    await sleep(500);
    assert.deepEqual(await liveIds(), [b2.id, b.id], `only the second filter's stream is open (not ${a2.id})`);

    // Signing out while the history loads: nothing is added afterwards, no stream, no error.
    const errorsBefore = pageErrors().length;
    const streamsBefore = streamUrls.length;
    hold = 1;
    await page.fill('#live-filters input[name=types]', '');
    await page.click('#live-filters button[type=submit]');
    await page.click('#sign-out');
    await page.waitForSelector('#sign-in:not([hidden])');
    await sleep(2000);
    assert.deepEqual(pageErrors().slice(errorsBefore), []);
    assert.equal(await page.$$eval('#live-events li', (rows) => rows.length), 0);
    assert.equal(streamUrls.length, streamsBefore, 'no stream opened after signing out');
  } finally {
    await page.unroute(isLiveHistory);
  }
  await signIn(page, serviceKey);
  await page.waitForSelector('#identity:not([hidden])');
  await expectConnection('live');
});

await step('the broker restarts; the page reconnects and shows every event from after the restart', async () => {
  const before = (await emit(serviceKey, { type: 'custom.restart.before', resourceId: 'r-0', resourceType: 'restart' })).id;
  await page.waitForSelector(`#live-events li[data-id="${before}"]`, { timeout: 5000 });
  await broker.stop('SIGKILL');
  await expectConnection('reconnecting');
  await broker.start();
  const after = [];
  for (let i = 1; i <= 5; i += 1) {
    after.push((await emit(serviceKey, { type: 'custom.restart.after', resourceId: `r-${i}`, resourceType: 'restart' })).id);
  }
  await page.waitForSelector(`#live-events li[data-id="${after[4]}"]`, { timeout: 15000 });
  await expectConnection('live');
  const live = (await emit(serviceKey, { type: 'custom.restart.live', resourceId: 'r-6', resourceType: 'restart' })).id;
  await page.waitForSelector(`#live-events li[data-id="${live}"]`, { timeout: 5000 });
  const ids = await liveIds();
  assert.deepEqual(ids.slice(0, 7), [live, ...[...after].reverse(), before], 'none missing, none repeated');
  // The whole list is exactly what history holds, newest first.
  const history = (await api(serviceKey, 'GET', `/v1/events?limit=${ids.length}`)).body.data.map((e) => e.id);
  assert.deepEqual(ids, history);
});

await step('the live list keeps at most 200 rows in the DOM', async () => {
  const events = Array.from({ length: 250 }, (_, i) => ({ type: 'custom.load.tick', resourceId: `tick-${i}`, resourceType: 'tick' }));
  const answer = await api(serviceKey, 'POST', '/v1/events/batch', { events });
  assert.equal(answer.status, 201);
  const newest = answer.body.data[249].id;
  await page.waitForSelector(`#live-events li[data-id="${newest}"]`, { timeout: 5000 });
  const ids = await liveIds();
  assert.equal(ids.length, 200);
  assert.deepEqual(ids, answer.body.data.slice(50).map((e) => e.id).reverse());
});

await step('the rate chart is stacked by namespace and updates live', async () => {
  await page.waitForFunction(() => document.querySelectorAll('#rate-chart path[data-namespace]').length >= 3);
  const namespaces = await page.$$eval('#rate-chart path', (paths) => paths.map((p) => p.dataset.namespace));
  for (const ns of ['custom', 'job', 'pod']) assert.ok(namespaces.includes(ns), `${ns} in ${namespaces}`);
  // Redrawn every second: the batch of 250 shows in the peak.
  await page.waitForFunction(() => {
    const match = document.getElementById('chart-max').textContent.match(/peak (\d+)\/s/);
    return match && Number(match[1]) >= 250;
  }, null, { timeout: 3000 });
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, 'live-desktop.png') });
});

await step('event detail: the full JSON, pretty-printed, with a copy button; keyboard only', async () => {
  const id = (await liveIds())[0];
  await page.focus(`#live-events li[data-id="${id}"] button`);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#detail[open]');
  const shown = await page.textContent('#detail-json');
  const stored = (await api(serviceKey, 'GET', `/v1/events/${id}`)).body;
  assert.deepEqual(JSON.parse(shown), stored);
  assert.equal(shown, JSON.stringify(stored, null, 2));
  await page.click('#detail-copy');
  await page.waitForFunction(() => document.getElementById('detail-copied').textContent.includes('Copied'));
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), shown);
  await page.keyboard.press('Escape');
  await page.waitForSelector('#detail:not([open])', { state: 'attached' });
});

let historyIds;
await step('history: since/until, paging with cursors, download as NDJSON', async () => {
  const tLocal = (ms) => {
    const d = new Date(ms);
    const p2 = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())}T${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}`;
  };
  const t0 = Date.now() - 2000;
  const events = Array.from({ length: 25 }, (_, i) => ({ type: 'custom.hist.item', resourceId: `h-${String(i).padStart(2, '0')}`, resourceType: 'hist' }));
  const answer = await api(serviceKey, 'POST', '/v1/events/batch', { events });
  assert.equal(answer.status, 201);
  historyIds = answer.body.data.map((e) => e.id).reverse(); // newest first
  await page.click('.tabs a[data-view=history]');
  await page.waitForSelector('#view-history:not([hidden])');
  await page.fill('#history-filters input[name=resourceType]', 'hist');
  await page.fill('#history-filters input[name=types]', 'custom.hist.*');
  await page.fill('#history-filters input[name=until]', tLocal(t0 - 60000));
  await page.selectOption('#history-filters select[name=limit]', '10');
  await page.click('#history-filters button[type=submit]');
  await page.waitForFunction(() => document.getElementById('history-events').textContent.includes('No events match'));
  await page.fill('#history-filters input[name=until]', '');
  await page.fill('#history-filters input[name=since]', tLocal(t0 - 60000));
  await page.click('#history-filters button[type=submit]');
  const rowsOf = () => page.$$eval('#history-events li.event', (rows) => rows.map((r) => r.dataset.id));
  await waitFor('page 1', async () => (await rowsOf())[0] === historyIds[0]);
  assert.deepEqual(await rowsOf(), historyIds.slice(0, 10));
  assert.equal(await page.isDisabled('#history-prev'), true);
  await page.click('#history-next');
  await waitFor('page 2', async () => (await rowsOf())[0] === historyIds[10]);
  assert.deepEqual(await rowsOf(), historyIds.slice(10, 20));
  await page.click('#history-next');
  await waitFor('page 3', async () => (await rowsOf())[0] === historyIds[20]);
  assert.deepEqual(await rowsOf(), historyIds.slice(20));
  assert.equal(await page.isDisabled('#history-next'), true);
  assert.match(await page.textContent('#history-page'), /Page 3 \(last\)/);
  await page.click('#history-prev');
  await waitFor('page 2 again', async () => (await rowsOf())[0] === historyIds[10]);
  assert.deepEqual(await rowsOf(), historyIds.slice(10, 20));
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#history-download')]);
  assert.match(download.suggestedFilename(), /\.ndjson$/);
  const lines = fs.readFileSync(await download.path(), 'utf8').trim().split('\n');
  assert.deepEqual(lines.map((l) => JSON.parse(l).id), historyIds, 'every matching event, once, newest first');
});

await step('SDK in page context: getHistory maps options, subscribe/dispatch/unsubscribe, fromEnv', async () => {
  const result = await page.evaluate(async ({ key }) => {
    const { CpodClient, CpodError } = await import('/sdk.js');
    const client = new CpodClient({ baseUrl: location.origin, apiKey: key });
    const first = await client.events.getHistory({ types: ['custom.hist.*'], resourceType: 'hist', limit: 10, since: new Date(Date.now() - 3600000) });
    const second = await client.events.getHistory({ types: 'custom.hist.*', resourceType: 'hist', limit: 10, cursor: first.nextCursor });
    const oldest = await client.events.getHistory({ resourceId: 'h-00', resourceType: 'hist', order: 'asc' });
    let unknownOption = null;
    try {
      await client.events.getHistory({ resourcetype: 'hist' });
    } catch (e) {
      unknownOption = e instanceof TypeError ? e.message : String(e);
    }
    let brokerError = null;
    try {
      await client.events.getHistory({ since: 'yesterday-ish' });
    } catch (e) {
      brokerError = e instanceof CpodError ? { status: e.status, code: e.code, param: e.param } : String(e);
    }
    const seen = { pods: [], failures: [], all: [] };
    const pods = client.events.subscribe({ types: ['pod.*'] }, (e) => seen.pods.push(e.type));
    client.events.subscribe({ types: '*.failed', resourceType: 'pod' }, (e) => seen.failures.push(e.type));
    client.events.subscribe({}, (e) => seen.all.push(e.type));
    const ev = (type, resourceType) => ({ id: crypto.randomUUID(), type, resourceType, resourceId: 'x', organizationId: 'o', workspaceId: null, payload: {}, timestamp: new Date().toISOString() });
    const counts = [
      client.events.dispatch(ev('pod.failed', 'pod')),
      client.events.dispatch(ev('job.failed', 'job')),
      client.events.dispatch(ev('custom.pod.thing', 'pod')),
    ];
    pods.unsubscribe();
    counts.push(client.events.dispatch(ev('pod.failed', 'pod')));
    let noEnv = null;
    try {
      CpodClient.fromEnv();
    } catch (e) {
      noEnv = e.message;
    }
    // A filter the broker refuses ends the stream with onError instead of retrying forever.
    const badFilter = await new Promise((resolve) => {
      const bad = client.events.stream({ types: ['Pod.*'] }, {
        onError: (e) => resolve({ status: e.status, code: e.code, param: e.param, state: bad.state }),
      });
      setTimeout(() => resolve('no onError within 8 s'), 8000);
    });
    const fromEnv = CpodClient.fromEnv({ CPOD_BASE_URL: location.origin, CPOD_API_KEY: key });
    const me = await fromEnv.keys.me();
    return {
      first: { n: first.data.length, hasMore: first.hasMore, cursor: typeof first.nextCursor, ids: first.data.map((e) => e.id) },
      second: { ids: second.data.map((e) => e.id), hasMore: second.hasMore },
      oldest: oldest.data.map((e) => e.resourceId),
      unknownOption, brokerError, seen, counts, noEnv, role: me.role, badFilter,
    };
  }, { key: serviceKey });
  assert.deepEqual(result.first, { n: 10, hasMore: true, cursor: 'string', ids: historyIds.slice(0, 10) });
  assert.deepEqual(result.second, { ids: historyIds.slice(10, 20), hasMore: true });
  assert.deepEqual(result.oldest, ['h-00']);
  assert.match(result.unknownOption, /unknown option `resourcetype`/);
  assert.deepEqual(result.brokerError, { status: 400, code: 'invalid_request', param: 'since' });
  assert.deepEqual(result.seen.pods, ['pod.failed']);
  assert.deepEqual(result.seen.failures, ['pod.failed', 'pod.failed']);
  assert.deepEqual(result.seen.all, ['pod.failed', 'job.failed', 'custom.pod.thing', 'pod.failed']);
  assert.deepEqual(result.counts, [3, 1, 1, 2]);
  assert.match(result.noEnv, /in a browser, use new CpodClient/);
  assert.equal(result.role, 'service');
  assert.deepEqual(result.badFilter, { status: 400, code: 'invalid_request', param: 'types', state: 'closed' });
});

await step('SDK stream: dispatches to subscriptions, renews an expired ticket and resumes, reports reset', async () => {
  await page.evaluate(async ({ key }) => {
    const { CpodClient } = await import('/sdk.js');
    const client = new CpodClient({ apiKey: key });
    const state = { received: [], dispatched: [], states: [], resets: [] };
    window.sdkTest = state;
    client.events.subscribe({ types: ['custom.sdk.*'] }, (e) => state.dispatched.push(e.resourceId));
    client.events.subscribe({ types: ['custom.other.*'] }, (e) => state.dispatched.push(`wrong:${e.resourceId}`));
    state.stream = client.events.stream({ types: ['custom.sdk.*'] }, {
      ticketTtlSeconds: 2,
      onEvent: (e) => state.received.push(e.resourceId),
      onStateChange: (s) => state.states.push(s),
    });
    // A client of its own, so that its events are not dispatched to the subscriptions above.
    state.resetStream = new CpodClient({ apiKey: key }).events.stream({}, {
      lastEventId: '01900000-0000-7000-8000-000000000000',
      onReset: (r) => state.resets.push(r),
    });
  }, { key: serviceKey });
  await page.waitForFunction(() => window.sdkTest.states.includes('live'));
  await emit(serviceKey, { type: 'custom.other.thing', resourceId: 'ignored', resourceType: 'sdk' });
  await emit(serviceKey, { type: 'custom.sdk.one', resourceId: 'a', resourceType: 'sdk' });
  await page.waitForFunction(() => window.sdkTest.received.includes('a'), null, { timeout: 5000 });
  // The 2-second ticket expires: the broker ends the stream, refuses the browser's reconnect,
  // and the SDK fetches a new ticket and resumes after `a`.
  await sleep(2500);
  await emit(serviceKey, { type: 'custom.sdk.two', resourceId: 'b', resourceType: 'sdk' });
  await sleep(1000);
  await emit(serviceKey, { type: 'custom.sdk.three', resourceId: 'c', resourceType: 'sdk' });
  await page.waitForFunction(() => window.sdkTest.received.includes('c'), null, { timeout: 20000 });
  const state = await page.evaluate(() => {
    const s = window.sdkTest;
    const out = { received: s.received, dispatched: s.dispatched, resets: s.resets, tickets: s.stream.ticketsFetched, states: s.states };
    s.stream.close();
    s.resetStream.close();
    return out;
  });
  assert.deepEqual(state.received, ['a', 'b', 'c'], 'in order, none missing, none twice');
  assert.deepEqual(state.dispatched, ['a', 'b', 'c'], 'dispatched only to the matching subscription');
  assert.ok(state.tickets >= 2, `a new ticket was fetched after expiry (${state.tickets})`);
  assert.ok(state.states.includes('reconnecting'), state.states.join(','));
  assert.deepEqual(state.resets, [{ reason: 'unknown_last_event_id', lastEventId: '01900000-0000-7000-8000-000000000000' }]);
});

await step('SDK stream: a ticket request the broker refuses for good ends the stream with onError', async () => {
  const result = await page.evaluate(async ({ key }) => {
    const { CpodClient } = await import('/sdk.js');
    const states = [];
    let reported;
    const onError = new Promise((resolve) => (reported = resolve));
    const stream = new CpodClient({ apiKey: key }).events.stream({}, {
      ticketTtlSeconds: 100000, // over the broker's maximum of 86400: a 400, every time
      onStateChange: (s) => states.push(s),
      onError: (e) => reported({ status: e.status, code: e.code, param: e.param }),
    });
    const error = await Promise.race([onError, new Promise((resolve) => setTimeout(() => resolve('no onError within 5 s'), 5000))]);
    const out = { error, state: stream.state, states, tickets: stream.ticketsFetched };
    stream.close();
    return out;
  }, { key: serviceKey });
  assert.deepEqual(result.error, { status: 400, code: 'invalid_request', param: 'ttlSeconds' });
  assert.equal(result.state, 'closed');
  assert.deepEqual(result.states, ['closed'], 'never "reconnecting"');
  assert.equal(result.tickets, 0);
});

await step('SDK stream: after a reset, renewals and reconnects resume from the reset time, with no second reset', async () => {
  const unknown = '01900000-0000-7000-8000-000000000001';
  const firstUrl = streamUrls.length;
  const t0 = Date.now();
  await page.evaluate(async ({ key, unknown }) => {
    const { CpodClient } = await import('/sdk.js');
    const state = { received: [], states: [], resets: [], resetAt: null };
    window.resetTest = state;
    state.stream = new CpodClient({ apiKey: key }).events.stream({ types: ['custom.reset2.*'] }, {
      lastEventId: unknown,
      ticketTtlSeconds: 2,
      onEvent: (e) => state.received.push(e.resourceId),
      onStateChange: (s) => state.states.push(s),
      onReset: (r) => {
        state.resets.push(r);
        state.resetAt = Date.now();
      },
    });
  }, { key: serviceKey, unknown });
  await page.waitForFunction(() => window.resetTest.resets.length === 1, null, { timeout: 5000 });
  // Two expired tickets: each time the broker ends the stream, refuses the reconnect, and the
  // SDK fetches a new ticket and reopens. Nothing was received since the reset.
  await page.waitForFunction(
    () => window.resetTest.stream.ticketsFetched >= 3 && window.resetTest.stream.state === 'live',
    null,
    { timeout: 20000 },
  );
  const event = await emit(serviceKey, { type: 'custom.reset2.after', resourceId: 'r2', resourceType: 'reset2' });
  await page.waitForFunction(() => window.resetTest.received.includes('r2'), null, { timeout: 5000 });
  const state = await page.evaluate(() => {
    const s = window.resetTest;
    const out = { received: s.received, resets: s.resets, resetAt: s.resetAt, lastEventId: s.stream.lastEventId };
    s.stream.close();
    return out;
  });
  assert.deepEqual(state.resets, [{ reason: 'unknown_last_event_id', lastEventId: unknown }], 'one reset only');
  assert.deepEqual(state.received, ['r2']);
  assert.equal(state.lastEventId, event.id);
  const urls = streamUrls.slice(firstUrl).filter((u) => u.includes('custom.reset2')).map((u) => new URL(u).searchParams);
  assert.ok(urls.length >= 3, `the stream was opened at least three times (${urls.length})`);
  assert.equal(urls[0].get('lastEventId'), unknown);
  for (const query of urls.slice(1)) {
    assert.equal(query.get('lastEventId'), null, 'the unknown id is not asked for again');
    const since = Date.parse(query.get('since'));
    assert.ok(since >= t0 - 1000 && since <= state.resetAt + 1000, `since is the time of the reset (${query.get('since')})`);
  }
});

await step('the SDK module also works in Node with CpodClient.fromEnv()', async () => {
  const { CpodClient } = await import(pathToFileURL(path.join(HERE, '../../static/sdk.js')).href);
  const client = CpodClient.fromEnv({ CPOD_BASE_URL: base, CPOD_API_KEY: serviceKey });
  const page1 = await client.events.getHistory({ resourceType: 'hist', limit: 3 });
  assert.deepEqual(page1.data.map((e) => e.id), historyIds.slice(0, 3));
});

await step('webhooks: create shows the secret once; enable/disable, test, deliveries with retry, rotate, delete', async () => {
  await page.click('.tabs a[data-view=webhooks]');
  await page.waitForSelector('#view-webhooks:not([hidden])');
  await page.fill('#webhook-form input[name=url]', receiver.url);
  await page.fill('#webhook-form input[name=types]', 'pod.*');
  await page.fill('#webhook-form input[name=description]', 'on-call');
  await page.click('#webhook-form button[type=submit]');
  await page.waitForSelector('#webhook-secret:not([hidden])');
  const secret = await page.textContent('#webhook-secret code');
  assert.match(secret, /^whsec_[A-Za-z0-9+/]{32}$/);
  const card = await page.waitForSelector('#webhooks li.card');
  const id = await card.getAttribute('data-id');
  const listed = (await api(serviceKey, 'GET', '/v1/webhooks')).body;
  assert.ok(!JSON.stringify(listed).includes(secret), 'the API never shows the secret again');
  await page.click('#webhook-secret button:has-text("Done")');
  assert.equal(await page.isVisible('#webhook-secret'), false);
  await page.reload();
  await page.waitForSelector(`#webhooks li.card[data-id="${id}"]`);
  assert.ok(!(await page.content()).includes(secret), 'the secret is shown once only');
  const cardSel = `#webhooks li.card[data-id="${id}"]`;

  await page.click(`${cardSel} button:has-text("Send test")`);
  await page.waitForFunction((s) => document.querySelector(s).textContent.includes('Test delivered: 200'), cardSel);
  assert.ok(receiver.requests.some((r) => r.headers['x-cpod-event-type'] === 'webhook.test'));

  const event = await emit(serviceKey, { type: 'pod.stopped', resourceId: 'pod-wh', resourceType: 'pod' });
  await waitFor('the delivery', () => receiver.requests.some((r) => r.headers['webhook-id'] === event.id));
  await page.click(`${cardSel} button:has-text("Deliveries")`);
  const delivery = await page.waitForSelector('#delivery-list li.delivery.succeeded');
  assert.match(await delivery.textContent(), /pod\.stopped/);
  await page.waitForFunction(
    () => document.querySelector('#delivery-list li.delivery.succeeded').textContent.includes('1 attempt'),
  );
  await page.click('#delivery-list li.delivery.succeeded button:has-text("Retry")');
  await waitFor('the retried delivery', () => receiver.requests.filter((r) => r.headers['webhook-id'] === event.id).length === 2);
  await page.waitForFunction(() => document.querySelector('#delivery-list li.delivery').textContent.includes('2 attempts'), null, { timeout: 10000 });

  await page.click(`${cardSel} button:has-text("Disable")`);
  await page.waitForFunction((s) => document.querySelector(s)?.textContent.includes('disabled'), cardSel);
  assert.equal((await api(serviceKey, 'GET', `/v1/webhooks/${id}`)).body.enabled, false);
  await page.click(`${cardSel} button:has-text("Enable")`);
  await page.waitForFunction((s) => document.querySelector(s)?.querySelector('.pill.on'), cardSel);
  assert.equal((await api(serviceKey, 'GET', `/v1/webhooks/${id}`)).body.enabled, true);

  await page.click(`${cardSel} button:has-text("Rotate secret")`);
  await page.waitForFunction((old) => {
    const code = document.querySelector('#webhook-secret code');
    return code && code.textContent.startsWith('whsec_') && code.textContent !== old;
  }, secret);
  await page.click('#webhook-secret button:has-text("Done")');

  await page.click(`${cardSel} button:has-text("Delete")`);
  await page.click(`${cardSel} button:has-text("Confirm delete")`);
  await page.waitForSelector(cardSel, { state: 'detached' });
  assert.equal((await api(serviceKey, 'GET', `/v1/webhooks/${id}`)).status, 404);
});

await step('keys: a service key creates a reader key (shown once) and revokes it', async () => {
  await page.click('.tabs a[data-view=keys]');
  await page.waitForSelector('#view-keys:not([hidden])');
  await page.fill('#key-form input[name=name]', 'wall screen');
  await page.selectOption('#key-form select[name=role]', 'reader');
  await page.click('#key-form button[type=submit]');
  await page.waitForSelector('#key-secret:not([hidden])');
  const key = await page.textContent('#key-secret code');
  assert.match(key, /^cpk_/);
  const me = await api(key, 'GET', '/v1/keys/me');
  assert.equal(me.status, 200);
  assert.equal(me.body.role, 'reader');
  assert.equal(me.body.organizationId, ORG);
  const cardSel = `#keys li.card[data-id="${me.body.id}"]`;
  await page.waitForSelector(cardSel);
  await page.click('#key-secret button:has-text("Done")');
  await page.click(`${cardSel} button:has-text("Revoke")`);
  await page.click(`${cardSel} button:has-text("Confirm revoke")`);
  await page.waitForSelector(cardSel, { state: 'detached' });
  assert.equal((await api(key, 'GET', '/v1/keys/me')).status, 401);
});

await step('at 360 px wide the page fits the screen and works', async () => {
  const small = await context.newPage();
  watch(small);
  await small.setViewportSize({ width: 360, height: 780 });
  await small.goto(`${base}/#live`);
  await signIn(small, serviceKey);
  await small.waitForSelector('#live-events li.event');
  await small.waitForFunction(() => document.getElementById('connection').dataset.state === 'live');
  const event = await emit(serviceKey, { type: 'person.updated', resourceId: 'person-360', resourceType: 'person', workspaceId: 'ws-mobile' });
  await small.waitForSelector(`#live-events li[data-id="${event.id}"]`, { timeout: 5000 });
  const width = await small.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 360, `no horizontal scrolling (scrollWidth ${width})`);
  await small.screenshot({ path: path.join(SCREENSHOTS, 'live-360.png') });
  for (const view of ['history', 'webhooks', 'keys']) {
    await small.click(`.tabs a[data-view=${view}]`);
    await small.waitForSelector(`#view-${view}:not([hidden])`);
    await small.waitForTimeout(300);
    const viewWidth = await small.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(viewWidth <= 360, `${view}: no horizontal scrolling (scrollWidth ${viewWidth})`);
  }
  await small.close();
});

await step('an admin key sees every organization and names one where it must', async () => {
  const admin = await context.newPage();
  watch(admin);
  await admin.goto(`${base}/`);
  await signIn(admin, ADMIN_KEY);
  await admin.waitForSelector('#identity:not([hidden])');
  assert.equal(await admin.textContent('#identity-org'), 'every organization');
  assert.equal(await admin.textContent('#identity-role'), 'admin');
  assert.equal(await admin.inputValue('#admin-org'), '*');
  await admin.waitForFunction(() => document.getElementById('connection').dataset.state === 'live');
  const other = await emit(ADMIN_KEY, { type: 'custom.admin.seen', resourceId: 'a-1', resourceType: 'thing', organizationId: 'org-other' });
  await admin.waitForSelector(`#live-events li[data-id="${other.id}"]`, { timeout: 5000 });
  await admin.fill('#admin-org', ORG);
  await admin.dispatchEvent('#admin-org', 'change');
  await admin.waitForFunction(() => document.getElementById('connection').dataset.state === 'live');
  const ids = await liveIds(admin);
  assert.ok(ids.length > 0 && !ids.includes(other.id), 'only the named organization is shown');
  await admin.click('.tabs a[data-view=keys]');
  await admin.fill('#key-form input[name=name]', 'second org reader');
  await admin.fill('#key-form input[name=organizationId]', 'org-two');
  await admin.click('#key-form button[type=submit]');
  await admin.waitForSelector('#key-secret:not([hidden])');
  const me = (await api(await admin.textContent('#key-secret code'), 'GET', '/v1/keys/me')).body;
  assert.equal(me.organizationId, 'org-two');
  await admin.close();
});

await step('a key revoked while the page is open signs it out with a clear message', async () => {
  const reader = (await api(serviceKey, 'POST', '/v1/keys', { role: 'reader', name: 'soon revoked' })).body;
  const watcher = await context.newPage();
  watch(watcher);
  await watcher.goto(`${base}/`);
  await signIn(watcher, reader.key);
  await watcher.waitForFunction(() => document.getElementById('connection').dataset.state === 'live');
  assert.equal(await watcher.isVisible('#keys-tab'), false, 'a reader key gets no Keys page');
  assert.equal((await api(serviceKey, 'DELETE', `/v1/keys/${reader.id}`)).status, 200);
  await watcher.waitForSelector('#sign-in:not([hidden])', { timeout: 15000 });
  assert.match(await watcher.textContent('#message-text'), /not accepted \(401\)/);
  assert.equal(await watcher.evaluate(() => sessionStorage.getItem('cpod.apiKey')), null);
  await watcher.close();
});

await step('the server being down shows a clear message', async () => {
  await page.click('.tabs a[data-view=live]');
  await expectConnection('live');
  await broker.stop();
  await expectConnection('reconnecting');
  await page.click('.tabs a[data-view=history]');
  await page.click('#history-filters button[type=submit]');
  await page.waitForSelector('#message:not([hidden])');
  assert.match(await page.textContent('#message-text'), /Cannot reach the broker at http:\/\/127\.0\.0\.1:\d+\. Is it running\?/);
  await page.click('#sign-out');
  assert.equal(await page.isVisible('#message'), false);
  await signIn(page, serviceKey);
  await page.waitForSelector('#message-retry:not([hidden])');
  assert.match(await page.textContent('#message-text'), /Cannot reach the broker/);
  assert.equal(await page.isVisible('#sign-in'), true);
  await broker.start();
  await page.click('#message-retry');
  await page.waitForSelector('#identity:not([hidden])');
  await expectConnection('live');
});

await step('resuming after an event that has expired shows the reset state and goes on live', async () => {
  await page.click('.tabs a[data-view=live]');
  const last = await emit(serviceKey, { type: 'custom.reset.before', resourceId: 'z-1', resourceType: 'reset' });
  await page.waitForSelector(`#live-events li[data-id="${last.id}"]`, { timeout: 5000 });
  await page.click('#pause');
  await expectConnection('paused');
  // The same database with a 1-second retention: the last event shown expires.
  await broker.stop();
  await broker.start({ CPOD_RETENTION: '1s' });
  await sleep(1500);
  await page.click('#pause');
  await expectConnection('reset');
  assert.match(await page.textContent('#live-note'), new RegExp(`could not resume after ${last.id} \\(unknown_last_event_id\\)`));
  // A reconnect (the broker restarts) resumes from the time of the reset, not from the unknown
  // id again: no second reset.
  let since = streamUrls.length;
  await broker.stop();
  await broker.start({ CPOD_RETENTION: '1s' });
  await expectConnection('live', 15000);
  await sleep(1500);
  assert.equal(await page.getAttribute('#connection', 'data-state'), 'live', 'no second reset after a reconnect');
  const reopened = streamUrls.slice(since);
  assert.ok(reopened.length > 0 && reopened.every((u) => !u.includes('lastEventId=') && u.includes('since=')), reopened.join('\n'));
  // Neither does a pause and a resume.
  since = streamUrls.length;
  await page.click('#pause');
  await expectConnection('paused');
  await page.click('#pause');
  await expectConnection('live');
  await sleep(1500);
  assert.equal(await page.getAttribute('#connection', 'data-state'), 'live', 'no second reset after a resume');
  const resumed = streamUrls.slice(since);
  assert.ok(resumed.length > 0 && resumed.every((u) => !u.includes(last.id)), resumed.join('\n'));
  const fresh = await emit(serviceKey, { type: 'custom.reset.after', resourceId: 'z-2', resourceType: 'reset' });
  await page.waitForSelector(`#live-events li[data-id="${fresh.id}"]`, { timeout: 5000 });
});

await step('no request ever left the broker\'s origin, and the page threw nothing', async () => {
  assert.deepEqual(externalRequests, []);
  assert.deepEqual(pageErrors(), []);
});

const scenariosDone = Date.now();
await shutdown();
receiver.server.closeAllConnections();
receiver.server.close();
fs.rmSync(dir, { recursive: true, force: true });
console.log(
  `\n${results.length} scenarios passed in ${((scenariosDone - started) / 1000).toFixed(1)} s (shutdown ${Date.now() - scenariosDone} ms); screenshots in ${SCREENSHOTS}`,
);
// Idle keep-alive sockets of fetch would otherwise hold the process open for several seconds.
process.exit(0);
