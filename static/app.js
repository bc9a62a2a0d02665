// The cPod Events dashboard: sign-in, live view with a rate chart, history, webhooks, keys.
// Built on the browser SDK (`/sdk.js`); no framework, no build step. Every DOM update goes
// through textContent (never innerHTML with data), so event fields cannot inject markup.

import { CpodClient, CpodError } from '/sdk.js';

const KEY_STORAGE = 'cpod.apiKey';
/** Rows kept in the live list; older rows leave the DOM. */
const MAX_LIVE_ROWS = 200;
/** The rate chart: one bucket per second over five minutes. */
const CHART_SECONDS = 300;
const NAMESPACE_COLOURS = {
  pod: '#2f80ed',
  job: '#9b51e0',
  person: '#27ae60',
  credential: '#eb5757',
  custom: '#f2994a',
};

const $ = (id) => document.getElementById(id);

/** @type {CpodClient|null} */
let client = null;
/** @type {{id: string, organizationId: string|null, role: string, name: string}|null} */
let me = null;

// ---------------------------------------------------------------------------------------------
// Small helpers

/** An element with a class and text. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function button(text, onClick, className = 'secondary') {
  const b = el('button', className, text);
  b.type = 'button';
  b.addEventListener('click', onClick);
  return b;
}

function namespaceOf(type) {
  return String(type).split('.')[0];
}

function colourOf(namespace) {
  if (NAMESPACE_COLOURS[namespace]) return NAMESPACE_COLOURS[namespace];
  let hash = 0;
  for (const c of namespace) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360} 55% 50%)`;
}

/** A clear sentence for any failure. */
function describe(error) {
  if (error instanceof CpodError) {
    if (error.status === 0) {
      return `Cannot reach the broker at ${client ? client.baseUrl : location.origin}. Is it running?`;
    }
    if (error.status === 401) return `This key was not accepted (401): ${error.message}. Sign in with a valid key.`;
    if (error.status === 403) return `This key may not do that (403): ${error.message}`;
    const param = error.param ? ` (${error.param})` : '';
    return `${error.message}${param} — ${error.status} ${error.code}`;
  }
  if (error instanceof TypeError) return error.message;
  return String(error && error.message ? error.message : error);
}

function showMessage(text, { retry } = {}) {
  $('message-text').textContent = text;
  $('message').hidden = false;
  const retryButton = $('message-retry');
  retryButton.hidden = !retry;
  retryButton.onclick = retry
    ? () => {
        hideMessage();
        retry();
      }
    : null;
}

function hideMessage() {
  $('message').hidden = true;
}

/** Runs an action, showing its failure; a 401 signs out. */
async function attempt(action) {
  try {
    return await action();
  } catch (error) {
    showMessage(describe(error));
    if (error instanceof CpodError && error.status === 401) signOut({ keepMessage: true });
    return undefined;
  }
}

/** The filter fields of a form, types as a list. */
function filterOf(form) {
  const data = new FormData(form);
  const filter = {};
  const types = String(data.get('types') || '')
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean);
  if (types.length) filter.types = types;
  for (const name of ['resourceType', 'resourceId']) {
    const value = String(data.get(name) || '').trim();
    if (value) filter[name] = value;
  }
  return filter;
}

/** The organization an admin key looks at (`*`: all); nothing for org-scoped keys. */
function organizationScope() {
  if (!me || me.role !== 'admin') return {};
  return { organizationId: $('admin-org').value.trim() || '*' };
}

/** The local time of a timestamp; with the date too where rows span days (history). */
function timeOf(timestamp, withDate = false) {
  const date = new Date(timestamp);
  if (Number.isNaN(date.getTime())) return timestamp;
  const time = date.toLocaleTimeString([], { hour12: false });
  return withDate ? `${date.toLocaleDateString()} ${time}` : time;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}

/** A box showing a secret once, with a copy button. */
function showOnce(container, title, secret) {
  container.replaceChildren();
  container.append(el('p', 'once-title', title));
  const code = el('code', 'secret', secret);
  code.tabIndex = 0;
  container.append(code);
  const status = el('span', 'note');
  status.setAttribute('role', 'status');
  container.append(
    button('Copy', async () => {
      status.textContent = (await copyText(secret)) ? 'Copied.' : 'Copy failed: select the text instead.';
    }),
    button('Done', () => {
      container.replaceChildren();
      container.hidden = true;
    }),
    status,
  );
  container.hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Event rows and the detail dialog

function eventRow(event, withDate = false) {
  const item = el('li', 'event');
  item.dataset.id = event.id;
  item.dataset.type = event.type;
  const namespace = namespaceOf(event.type);
  item.style.setProperty('--ns', colourOf(namespace));
  const open = el('button', 'event-open');
  open.type = 'button';
  open.setAttribute('aria-label', `${event.type} on ${event.resourceType} ${event.resourceId}: show details`);
  const time = el('time', 'event-time', timeOf(event.timestamp, withDate));
  time.dateTime = event.timestamp;
  open.append(
    time,
    el('span', 'event-type', event.type),
    el('span', 'event-resource', `${event.resourceType}/${event.resourceId}`),
    el('span', 'event-workspace', event.workspaceId || '—'),
  );
  open.addEventListener('click', () => showDetail(event));
  item.append(open);
  return item;
}

function showDetail(event) {
  const json = JSON.stringify(event, null, 2);
  $('detail-title').textContent = event.type;
  $('detail-json').textContent = json;
  $('detail-copied').textContent = '';
  $('detail-copy').onclick = async () => {
    $('detail-copied').textContent = (await copyText(json))
      ? 'Copied to the clipboard.'
      : 'Copy failed: select the text instead.';
  };
  const dialog = $('detail');
  if (!dialog.open) dialog.showModal();
}

// ---------------------------------------------------------------------------------------------
// Live view

const live = {
  /** @type {import('/sdk.js').EventStream|null} */
  stream: null,
  filter: {},
  paused: false,
  lastEventId: null,
  /** Ids already shown (a replay after a reconnect never shows one twice). */
  seen: new Set(),
  /** Per second (Unix seconds) → namespace → count. */
  buckets: new Map(),
  namespaces: new Set(),
};

function setConnection(state, text) {
  const badge = $('connection');
  badge.dataset.state = state;
  badge.textContent = text || state;
}

function addLiveEvent(event) {
  if (live.seen.has(event.id)) return;
  live.seen.add(event.id);
  if (live.seen.size > 5000) {
    // Forget the oldest ids; a replay only ever repeats recent ones.
    const oldest = live.seen.values().next().value;
    live.seen.delete(oldest);
  }
  live.lastEventId = event.id;
  countForChart(event);
  const list = $('live-events');
  list.prepend(eventRow(event));
  while (list.childElementCount > MAX_LIVE_ROWS) list.lastElementChild.remove();
  $('live-note').textContent = '';
}

function countForChart(event) {
  const second = Math.floor(Date.parse(event.timestamp) / 1000);
  if (!Number.isFinite(second) || second <= Date.now() / 1000 - CHART_SECONDS) return;
  const namespace = namespaceOf(event.type);
  live.namespaces.add(namespace);
  let bucket = live.buckets.get(second);
  if (!bucket) {
    bucket = new Map();
    live.buckets.set(second, bucket);
  }
  bucket.set(namespace, (bucket.get(namespace) || 0) + 1);
}

/** The first second the chart shows; older buckets are dropped. */
function pruneChart() {
  const first = Math.floor(Date.now() / 1000) - CHART_SECONDS + 1;
  for (const second of live.buckets.keys()) if (second < first) live.buckets.delete(second);
  return first;
}

/** Redraws the stacked area chart of the last five minutes. */
function drawChart() {
  const svg = $('rate-chart');
  const first = pruneChart();
  const namespaces = [...live.namespaces].sort();
  const totals = new Array(CHART_SECONDS).fill(0);
  for (let i = 0; i < CHART_SECONDS; i += 1) {
    const bucket = live.buckets.get(first + i);
    if (bucket) for (const count of bucket.values()) totals[i] += count;
  }
  const max = Math.max(1, ...totals);
  const width = 600;
  const height = 120;
  const x = (i) => (i / (CHART_SECONDS - 1)) * width;
  const y = (v) => height - (v / max) * (height - 4);
  const base = new Array(CHART_SECONDS).fill(0);
  const ns = 'http://www.w3.org/2000/svg';
  const paths = [];
  for (const namespace of namespaces) {
    const top = base.map((b, i) => b + ((live.buckets.get(first + i) || new Map()).get(namespace) || 0));
    let d = `M0 ${y(base[0])}`;
    for (let i = 0; i < CHART_SECONDS; i += 1) d += ` L${x(i).toFixed(1)} ${y(top[i]).toFixed(1)}`;
    for (let i = CHART_SECONDS - 1; i >= 0; i -= 1) d += ` L${x(i).toFixed(1)} ${y(base[i]).toFixed(1)}`;
    const path = document.createElementNS(ns, 'path');
    path.setAttribute('d', `${d} Z`);
    path.setAttribute('fill', colourOf(namespace));
    path.setAttribute('data-namespace', namespace);
    paths.push(path);
    for (let i = 0; i < CHART_SECONDS; i += 1) base[i] = top[i];
  }
  svg.replaceChildren(...paths);
  $('chart-max').textContent = `peak ${Math.max(...totals)}/s`;
  const legend = $('chart-legend');
  legend.replaceChildren(
    ...namespaces.map((namespace) => {
      const item = el('span', 'legend-item', namespace);
      item.style.setProperty('--ns', colourOf(namespace));
      return item;
    }),
  );
}

/**
 * Counts the starts of the live view (and sign-outs): a `startLive` that finds it changed after
 * an await has been superseded, and must neither touch the list nor open a stream.
 */
let liveGeneration = 0;

function stopLive() {
  if (live.stream) live.stream.close();
  live.stream = null;
}

/** Opens the stream after `lastEventId` (or from `since`). */
function openStream({ lastEventId, since } = {}) {
  stopLive();
  const stream = client.events.stream(
    { ...organizationScope(), ...live.filter },
    {
      lastEventId,
      since,
      onEvent: (event) => {
        if (live.stream === stream) addLiveEvent(event);
      },
      onStateChange: (state) => {
        if (live.stream !== stream) return;
        if (state === 'live') {
          setConnection('live');
          if (!$('message').hidden && $('message-text').textContent.startsWith('Live stream')) hideMessage();
        } else if (state === 'reconnecting') setConnection('reconnecting');
        else if (state === 'connecting') setConnection('connecting');
      },
      onReset: (reset) => {
        if (live.stream !== stream) return;
        // The shown rows no longer lead to a resume point: a resume after a pause re-reads
        // the last five minutes instead of asking for the unknown id (another reset).
        live.lastEventId = null;
        setConnection('reset', 'reset — live');
        $('live-note').textContent =
          `The broker could not resume after ${reset.lastEventId} (${reset.reason}): events may be missing here; History has them all.`;
      },
      onError: (error) => {
        if (live.stream !== stream) return;
        setConnection('closed', 'disconnected');
        showMessage(`Live stream stopped. ${describe(error)}`);
        if (error.status === 401) signOut({ keepMessage: true });
      },
    },
  );
  live.stream = stream;
}

/** Starts the live view afresh: the last five minutes from history, then the stream. */
async function startLive() {
  liveGeneration += 1;
  const generation = liveGeneration;
  stopLive();
  live.seen.clear();
  live.buckets.clear();
  live.namespaces.clear();
  live.lastEventId = null;
  $('live-events').replaceChildren();
  $('live-note').textContent = '';
  setConnection('connecting');
  const windowStart = new Date(Date.now() - CHART_SECONDS * 1000).toISOString();
  let page;
  try {
    page = await client.events.getHistory({
      ...organizationScope(),
      ...live.filter,
      since: windowStart,
      limit: 1000,
    });
  } catch (error) {
    if (generation !== liveGeneration) return;
    setConnection('closed', 'disconnected');
    showMessage(describe(error), { retry: startLive });
    if (error instanceof CpodError && error.status === 401) signOut({ keepMessage: true });
    return;
  }
  // Applied again, another organization chosen, or signed out while this page loaded.
  if (generation !== liveGeneration) return;
  // Oldest first, so that the newest ends on top.
  const recent = [...page.data].reverse();
  for (const event of recent) countForChart(event);
  for (const event of recent.slice(-MAX_LIVE_ROWS)) addLiveEvent(event);
  if (page.data.length === 0) $('live-note').textContent = 'No events in the last 5 minutes yet. New ones appear here as they happen.';
  drawChart();
  if (live.paused) {
    setConnection('paused');
    return;
  }
  // After the newest shown event, or (none shown) from the start of the window: no gap.
  openStream(page.data.length ? { lastEventId: page.data[0].id } : { since: windowStart });
}

function togglePause() {
  const pause = $('pause');
  if (!live.paused) {
    live.paused = true;
    stopLive();
    setConnection('paused');
    pause.textContent = 'Resume';
    pause.setAttribute('aria-pressed', 'true');
  } else {
    live.paused = false;
    pause.textContent = 'Pause';
    pause.setAttribute('aria-pressed', 'false');
    // Replays everything stored after the last event shown, then goes on live.
    if (live.lastEventId) openStream({ lastEventId: live.lastEventId });
    else startLive();
  }
}

// ---------------------------------------------------------------------------------------------
// History

const historyView = {
  query: {},
  /** The cursor of each page shown so far (the first page has none). */
  cursors: [null],
  page: 0,
  nextCursor: null,
};

function historyQuery() {
  const form = $('history-filters');
  const data = new FormData(form);
  const query = { ...organizationScope(), ...filterOf(form) };
  for (const name of ['since', 'until']) {
    const value = String(data.get(name) || '');
    if (value) {
      const date = new Date(value); // datetime-local is the browser's local time
      if (Number.isNaN(date.getTime())) throw new TypeError(`${name} is not a valid time`);
      query[name] = date.toISOString();
    }
  }
  query.limit = Number(data.get('limit') || 50);
  return query;
}

async function loadHistoryPage(page) {
  const cursor = historyView.cursors[page];
  const result = await attempt(() =>
    client.events.getHistory({ ...historyView.query, ...(cursor ? { cursor } : {}) }),
  );
  if (!result) return;
  historyView.page = page;
  historyView.nextCursor = result.nextCursor;
  historyView.cursors.length = page + 1;
  if (result.nextCursor) historyView.cursors.push(result.nextCursor);
  const list = $('history-events');
  list.replaceChildren(...result.data.map((event) => eventRow(event, true)));
  if (result.data.length === 0) list.append(el('li', 'note', 'No events match these filters.'));
  $('history-page').textContent = `Page ${page + 1}${result.hasMore ? '' : ' (last)'} · ${result.data.length} events`;
  $('history-prev').disabled = page === 0;
  $('history-next').disabled = !result.hasMore;
}

async function searchHistory() {
  try {
    historyView.query = historyQuery();
  } catch (error) {
    showMessage(describe(error));
    return;
  }
  historyView.cursors = [null];
  await loadHistoryPage(0);
}

/** Every event of the current query (following cursors), as one NDJSON file. */
async function downloadHistory() {
  const status = $('history-page');
  const lines = [];
  let cursor = null;
  const ok = await attempt(async () => {
    do {
      const page = await client.events.getHistory({
        ...historyView.query,
        limit: 1000,
        ...(cursor ? { cursor } : {}),
      });
      for (const event of page.data) lines.push(JSON.stringify(event));
      cursor = page.nextCursor;
      status.textContent = `Downloading… ${lines.length} events`;
    } while (cursor);
    return true;
  });
  if (!ok) return;
  const blob = new Blob(lines.map((line) => `${line}\n`), { type: 'application/x-ndjson' });
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = `cpod-events-${new Date().toISOString().replace(/[:.]/g, '-')}.ndjson`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  status.textContent = `Downloaded ${lines.length} events.`;
}

// ---------------------------------------------------------------------------------------------
// Webhooks

const deliveries = { webhookId: null, cursor: null };

async function loadWebhooks() {
  const scope = organizationScope();
  const list = await attempt(() => client.webhooks.list(scope));
  if (!list) return;
  const container = $('webhooks');
  container.replaceChildren();
  if (list.length === 0) container.append(el('li', 'note', 'No webhooks yet.'));
  for (const webhook of list) container.append(webhookCard(webhook));
}

function webhookCard(webhook) {
  const card = el('li', 'card');
  card.dataset.id = webhook.id;
  const head = el('div', 'card-head');
  head.append(el('strong', 'card-title', webhook.url));
  head.append(el('span', `pill ${webhook.enabled ? 'on' : 'off'}`, webhook.enabled ? 'enabled' : 'disabled'));
  card.append(head);
  const facts = el('p', 'card-facts');
  facts.textContent = [
    `types ${webhook.types.join(', ')}`,
    webhook.resourceType ? `resource type ${webhook.resourceType}` : null,
    webhook.description,
    webhook.disabledReason ? `disabled: ${webhook.disabledReason}` : null,
    `created ${new Date(webhook.createdAt).toLocaleString()}`,
  ]
    .filter(Boolean)
    .join(' · ');
  card.append(facts);
  const result = el('p', 'note');
  result.setAttribute('role', 'status');
  const actions = el('div', 'actions');
  actions.append(
    button(webhook.enabled ? 'Disable' : 'Enable', async () => {
      if (await attempt(() => client.webhooks.update(webhook.id, { enabled: !webhook.enabled }))) loadWebhooks();
    }),
    button('Rotate secret', async () => {
      const rotated = await attempt(() => client.webhooks.rotateSecret(webhook.id));
      if (rotated) {
        showOnce(
          $('webhook-secret'),
          `New secret for ${webhook.url} (shown once; the old one keeps signing until ${new Date(rotated.previousSecretExpiresAt).toLocaleString()}):`,
          rotated.secret,
        );
      }
    }),
    button('Send test', async () => {
      result.textContent = 'Sending…';
      const outcome = await attempt(() => client.webhooks.test(webhook.id));
      if (outcome) {
        result.textContent = outcome.success
          ? `Test delivered: ${outcome.responseStatus} in ${outcome.durationMs} ms.`
          : `Test failed: ${outcome.error || `status ${outcome.responseStatus}`} (${outcome.durationMs} ms).`;
      } else result.textContent = '';
    }),
    button('Deliveries', () => openDeliveries(webhook)),
    deleteButton(async () => {
      if (await attempt(() => client.webhooks.delete(webhook.id))) {
        if (deliveries.webhookId === webhook.id) closeDeliveries();
        loadWebhooks();
      }
    }),
  );
  card.append(actions, result);
  return card;
}

/** A delete button that asks once more before acting. */
function deleteButton(action, label = 'Delete') {
  const b = button(label, () => {
    if (b.dataset.armed === 'true') {
      action();
      return;
    }
    b.dataset.armed = 'true';
    b.textContent = `Confirm ${label.toLowerCase()}`;
    b.classList.add('danger');
    setTimeout(() => {
      b.dataset.armed = 'false';
      b.textContent = label;
      b.classList.remove('danger');
    }, 5000);
  });
  return b;
}

async function createWebhook(form) {
  const data = new FormData(form);
  const body = { url: String(data.get('url')).trim(), ...organizationScope() };
  if (body.organizationId === '*') {
    showMessage('Name one organization (top right) to create a webhook with an admin key.');
    return;
  }
  const types = String(data.get('types') || '').split(',').map((t) => t.trim()).filter(Boolean);
  if (types.length) body.types = types;
  for (const name of ['resourceType', 'description']) {
    const value = String(data.get(name) || '').trim();
    if (value) body[name] = value;
  }
  const created = await attempt(() => client.webhooks.create(body));
  if (!created) return;
  form.reset();
  showOnce($('webhook-secret'), `Signing secret for ${created.url} — shown once, keep it now:`, created.secret);
  loadWebhooks();
}

async function openDeliveries(webhook) {
  deliveries.webhookId = webhook.id;
  deliveries.cursor = null;
  $('deliveries-title').textContent = `Deliveries to ${webhook.url}`;
  $('delivery-list').replaceChildren();
  $('deliveries').hidden = false;
  await loadDeliveries(false);
  $('deliveries').scrollIntoView({ block: 'nearest' });
}

function closeDeliveries() {
  deliveries.webhookId = null;
  $('deliveries').hidden = true;
}

async function loadDeliveries(more) {
  const id = deliveries.webhookId;
  if (!id) return;
  const page = await attempt(() =>
    client.webhooks.deliveries(id, more && deliveries.cursor ? { cursor: deliveries.cursor } : {}),
  );
  if (!page || deliveries.webhookId !== id) return;
  const list = $('delivery-list');
  if (!more) list.replaceChildren();
  for (const delivery of page.data) list.append(deliveryItem(id, delivery));
  if (!more && page.data.length === 0) list.append(el('li', 'note', 'No deliveries yet.'));
  deliveries.cursor = page.nextCursor;
  $('deliveries-more').hidden = !page.hasMore;
}

function deliveryItem(webhookId, delivery) {
  const item = el('li', `delivery ${delivery.status}`);
  item.dataset.id = delivery.id;
  const head = el('div', 'card-head');
  head.append(el('span', `pill ${delivery.status}`, delivery.status), el('strong', null, delivery.eventType));
  head.append(el('code', 'muted', delivery.eventId));
  item.append(head);
  const last = delivery.attempts[delivery.attempts.length - 1];
  const facts = [
    `${delivery.attempts.length} attempt${delivery.attempts.length === 1 ? '' : 's'}`,
    last ? `last: ${last.responseStatus ?? last.error ?? '—'} in ${last.durationMs} ms at ${new Date(last.attemptedAt).toLocaleTimeString()}` : null,
    delivery.nextAttemptAt ? `next attempt ${new Date(delivery.nextAttemptAt).toLocaleTimeString()}` : null,
  ];
  item.append(el('p', 'card-facts', facts.filter(Boolean).join(' · ')));
  const status = el('span', 'note');
  status.setAttribute('role', 'status');
  item.append(
    button('Retry', async () => {
      if (await attempt(() => client.webhooks.retryDelivery(webhookId, delivery.id))) {
        status.textContent = 'Retry queued.';
        setTimeout(() => loadDeliveries(false), 1000);
      }
    }),
    status,
  );
  return item;
}

// ---------------------------------------------------------------------------------------------
// Keys

async function loadKeys() {
  const scope = organizationScope();
  const query = scope.organizationId && scope.organizationId !== '*' ? scope : {};
  const keys = await attempt(() => client.keys.list(query));
  if (!keys) return;
  const container = $('keys');
  container.replaceChildren();
  for (const key of keys) {
    const card = el('li', 'card');
    card.dataset.id = key.id;
    const head = el('div', 'card-head');
    head.append(el('strong', 'card-title', key.name), el('span', 'pill', key.role));
    if (me && key.id === me.id) head.append(el('span', 'pill on', 'this key'));
    card.append(head);
    card.append(
      el(
        'p',
        'card-facts',
        `${key.organizationId || 'every organization'} · created ${new Date(key.createdAt).toLocaleString()} · ${key.id}`,
      ),
    );
    const manageable = me && (me.role === 'admin' ? key.role !== 'admin' : ['app', 'reader'].includes(key.role));
    if (manageable) {
      const actions = el('div', 'actions');
      actions.append(
        deleteButton(async () => {
          if (await attempt(() => client.keys.revoke(key.id))) loadKeys();
        }, 'Revoke'),
      );
      card.append(actions);
    }
    container.append(card);
  }
}

async function createKey(form) {
  const data = new FormData(form);
  const body = { name: String(data.get('name')).trim(), role: String(data.get('role')) };
  if (me.role === 'admin') {
    const org = String(data.get('organizationId') || '').trim();
    if (!org) {
      showMessage('An admin key must name the organization of the new key.');
      return;
    }
    body.organizationId = org;
  }
  const created = await attempt(() => client.keys.create(body));
  if (!created) return;
  form.reset();
  showOnce(
    $('key-secret'),
    `Key "${created.name}" (${created.role}, ${created.organizationId}) — shown once, keep it now:`,
    created.key,
  );
  loadKeys();
}

// ---------------------------------------------------------------------------------------------
// Views, sign-in and start-up

const VIEWS = ['live', 'history', 'webhooks', 'keys'];

function currentView() {
  const name = location.hash.replace('#', '');
  if (name === 'keys' && !mayManageKeys()) return 'live';
  return VIEWS.includes(name) ? name : 'live';
}

function mayManageKeys() {
  return me && (me.role === 'admin' || me.role === 'service');
}

let shownView = null;

function showView() {
  if (!me) return;
  const view = currentView();
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
  for (const link of document.querySelectorAll('.tabs a')) {
    if (link.dataset.view === view) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (view === shownView) return;
  shownView = view;
  if (view === 'history' && historyView.cursors.length === 1 && !$('history-events').childElementCount) searchHistory();
  if (view === 'webhooks') loadWebhooks();
  if (view === 'keys') loadKeys();
}

function showIdentity() {
  $('identity-org').textContent = me.organizationId || 'every organization';
  $('identity-role').textContent = me.role;
  $('identity').hidden = false;
  $('admin-org-field').hidden = me.role !== 'admin';
  $('keys-tab').hidden = !mayManageKeys();
  $('key-org-field').hidden = me.role !== 'admin';
  const serviceOption = document.querySelector('#key-form option[value="service"]');
  serviceOption.disabled = me.role !== 'admin';
  serviceOption.hidden = me.role !== 'admin';
}

/** Checks the key with the broker; answers whether the dashboard could start. */
async function signIn(apiKey) {
  client = new CpodClient({ baseUrl: location.origin, apiKey });
  try {
    me = await client.keys.me();
  } catch (error) {
    client = null;
    me = null;
    if (error instanceof CpodError && error.status === 0) {
      showMessage(describe(error), { retry: () => signIn(apiKey) });
      // The key may be fine: keep it for the retry.
      sessionStorage.setItem(KEY_STORAGE, apiKey);
    } else {
      sessionStorage.removeItem(KEY_STORAGE);
      showMessage(
        error instanceof CpodError && error.status === 401
          ? 'This key was not accepted: it is unknown, mistyped or revoked.'
          : describe(error),
      );
    }
    showSignIn();
    return false;
  }
  sessionStorage.setItem(KEY_STORAGE, apiKey);
  hideMessage();
  $('sign-in').hidden = true;
  $('app').hidden = false;
  showIdentity();
  shownView = null;
  showView();
  startLive();
  return true;
}

function showSignIn() {
  $('app').hidden = true;
  $('identity').hidden = true;
  $('sign-in').hidden = false;
  $('api-key').focus();
}

function signOut({ keepMessage = false } = {}) {
  liveGeneration += 1;
  stopLive();
  sessionStorage.removeItem(KEY_STORAGE);
  client = null;
  me = null;
  shownView = null;
  for (const id of ['live-events', 'history-events', 'webhooks', 'keys', 'delivery-list']) $(id).replaceChildren();
  historyView.cursors = [null];
  if (!keepMessage) hideMessage();
  showSignIn();
}

function wire() {
  $('sign-in-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('api-key').value.trim();
    $('api-key').value = '';
    if (key) signIn(key);
  });
  $('sign-out').addEventListener('click', () => signOut());
  $('message-close').addEventListener('click', hideMessage);
  $('live-filters').addEventListener('submit', (e) => {
    e.preventDefault();
    live.filter = filterOf(e.target);
    startLive();
  });
  $('pause').addEventListener('click', togglePause);
  $('admin-org').addEventListener('change', () => {
    startLive();
    shownView = null;
    historyView.cursors = [null];
    $('history-events').replaceChildren();
    showView();
  });
  $('history-filters').addEventListener('submit', (e) => {
    e.preventDefault();
    searchHistory();
  });
  $('history-next').addEventListener('click', () => loadHistoryPage(historyView.page + 1));
  $('history-prev').addEventListener('click', () => loadHistoryPage(Math.max(0, historyView.page - 1)));
  $('history-download').addEventListener('click', downloadHistory);
  $('webhook-form').addEventListener('submit', (e) => {
    e.preventDefault();
    createWebhook(e.target);
  });
  $('deliveries-refresh').addEventListener('click', () => loadDeliveries(false));
  $('deliveries-more').addEventListener('click', () => loadDeliveries(true));
  $('deliveries-close').addEventListener('click', closeDeliveries);
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    createKey(e.target);
  });
  $('detail-close').addEventListener('click', () => $('detail').close());
  window.addEventListener('hashchange', showView);
  setInterval(() => {
    if (me && !$('view-live').hidden) drawChart();
    else pruneChart();
  }, 1000);
}

wire();
const stored = sessionStorage.getItem(KEY_STORAGE);
if (stored) signIn(stored);
else showSignIn();
