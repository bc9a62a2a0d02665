// cPod Events — the browser SDK. One hand-written ES module, no build step, no dependencies.
//
//   import { CpodClient } from 'http://127.0.0.1:8080/sdk.js';
//   const client = new CpodClient({ baseUrl: 'http://127.0.0.1:8080', apiKey: 'cpk_…' });
//
// It has the shape of cPod's own JavaScript SDK (`events.getHistory`, `events.subscribe`,
// `events.dispatch`) plus `events.stream`, which keeps an EventSource open with stream tickets
// (a key never travels in a URL), renews the ticket when it expires, resumes after the last
// event it saw and dispatches every event to the matching local subscriptions.

/**
 * @typedef {Object} CpodEvent
 * @property {string} id UUIDv7, assigned by the broker
 * @property {string} type e.g. `pod.failed`
 * @property {string} resourceId
 * @property {string} resourceType
 * @property {string} organizationId
 * @property {string|null} workspaceId
 * @property {Object} payload
 * @property {string} timestamp ISO 8601 UTC with milliseconds
 */

/**
 * Which events a subscription, a stream or a history query wants. Every field is optional;
 * `types` are globs where `*` matches any run of characters, dots included.
 * @typedef {Object} EventFilter
 * @property {string} [organizationId] admin keys only (`*`: every organization)
 * @property {string[]|string} [types] e.g. `['pod.*', '*.failed']` or `'pod.*,*.failed'`
 * @property {string} [resourceType]
 * @property {string} [resourceId]
 * @property {string} [workspaceId]
 */

/**
 * @typedef {Object} HistoryOptions
 * @property {string} [organizationId]
 * @property {string[]|string} [types]
 * @property {string} [resourceType]
 * @property {string} [resourceId]
 * @property {string} [workspaceId]
 * @property {string|Date} [since] events at or after
 * @property {string|Date} [until] events before
 * @property {number} [limit] 1 to 1000 (default 50)
 * @property {'desc'|'asc'} [order] newest first by default
 * @property {string} [cursor] the `nextCursor` of the previous page
 */

/**
 * @typedef {Object} HistoryPage
 * @property {CpodEvent[]} data
 * @property {boolean} hasMore
 * @property {string|null} nextCursor
 */

/**
 * @typedef {'connecting'|'live'|'reconnecting'|'closed'} StreamState
 */

/**
 * @typedef {Object} StreamOptions
 * @property {string} [lastEventId] resume after this event (replayed from the store)
 * @property {string|Date} [since] replay from this time when there is no `lastEventId`
 * @property {(event: CpodEvent) => void} [onEvent] called for every event, before dispatch
 * @property {(state: StreamState) => void} [onStateChange]
 * @property {(reset: {reason: string, lastEventId: string}) => void} [onReset] the resume point
 *   was unknown or expired: events may have been missed, re-read history. The stream goes on
 *   live; a reopened stream resumes from the time of the reset (not from the unknown id again)
 * @property {(error: CpodError) => void} [onError] a failure the stream cannot recover from:
 *   any 4xx answer but 408 and 429 (the key was revoked: 401; a filter or a `ticketTtlSeconds`
 *   the broker refuses: 400; 403); the stream is closed
 * @property {number} [ticketTtlSeconds] lifetime of each stream ticket (default 3600)
 * @property {'cpod'|'cloudevents'} [format] how the broker writes each event: its own JSON (the
 *   default) or a structured CloudEvent 1.0, which `onEvent` then receives as it came; local
 *   subscriptions (`events.subscribe`) still get the cPod event it maps back to
 *   (`fromCloudEvent`)
 */

/** An answer of the broker that is not a success, or a broker that cannot be reached. */
export class CpodError extends Error {
  /**
   * @param {number} status HTTP status; 0 when the broker could not be reached
   * @param {string} code the contract's error code (`unauthorized`, …), or `network`
   * @param {string} message
   * @param {string|null} [param] the parameter at fault
   */
  constructor(status, code, message, param = null) {
    super(message);
    this.name = 'CpodError';
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

/**
 * Whether a failure is one that retrying cannot fix: every 4xx answer except 408 (Request
 * Timeout) and 429 (Too Many Requests). A 5xx or an unreachable broker (status 0) may pass.
 * @param {unknown} error
 * @returns {boolean}
 */
function isPermanent(error) {
  return (
    error instanceof CpodError &&
    error.status >= 400 &&
    error.status < 500 &&
    error.status !== 408 &&
    error.status !== 429
  );
}

/**
 * Whether `text` matches the glob `pattern` (`*` matches any run of characters, dots
 * included; everything else matches itself), as the broker decides it.
 * @param {string} pattern
 * @param {string} text
 * @returns {boolean}
 */
export function globMatches(pattern, text) {
  let p = 0;
  let t = 0;
  let starP = -1;
  let starT = -1;
  while (t < text.length) {
    if (p < pattern.length && pattern[p] === '*') {
      starP = p;
      starT = t;
      p += 1;
    } else if (p < pattern.length && pattern[p] === text[t]) {
      p += 1;
      t += 1;
    } else if (starP >= 0) {
      p = starP + 1;
      starT += 1;
      t = starT;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern[p] === '*') p += 1;
  return p === pattern.length;
}

/**
 * The type patterns of a filter as a list (a comma-separated string is split).
 * @param {string[]|string|undefined} types
 * @returns {string[]}
 */
function typeList(types) {
  if (types === undefined || types === null) return [];
  const list = Array.isArray(types) ? types : String(types).split(',');
  return list.map((t) => String(t).trim()).filter((t) => t !== '');
}

/**
 * Whether an event passes a filter: any of its type patterns, and every exact field given.
 * @param {EventFilter} filter
 * @param {CpodEvent} event
 * @returns {boolean}
 */
export function matchesFilter(filter, event) {
  const f = filter || {};
  if (f.organizationId && f.organizationId !== '*' && f.organizationId !== event.organizationId) {
    return false;
  }
  const types = typeList(f.types);
  if (types.length > 0 && !types.some((pattern) => globMatches(pattern, event.type))) return false;
  if (f.resourceType && f.resourceType !== event.resourceType) return false;
  if (f.resourceId && f.resourceId !== event.resourceId) return false;
  if (f.workspaceId && f.workspaceId !== event.workspaceId) return false;
  return true;
}

const FILTER_FIELDS = ['organizationId', 'types', 'resourceType', 'resourceId', 'workspaceId'];
const HISTORY_FIELDS = [...FILTER_FIELDS, 'since', 'until', 'limit', 'order', 'cursor', 'format'];
const FORMATS = ['cpod', 'cloudevents'];

/**
 * The cPod event a CloudEvent from the broker maps back to (README, "CloudEvents"): `source`
 * `/organizations/<org>[/workspaces/<ws>]`, `subject` `<resourceType>/<resourceId>`, `time`,
 * `data`.
 * @param {Object} cloudEvent a structured CloudEvent 1.0
 * @returns {CpodEvent}
 */
export function fromCloudEvent(cloudEvent) {
  const source = /^\/organizations\/([^/]+)(?:\/workspaces\/([^/]+))?$/.exec(cloudEvent.source || '');
  if (!source) throw new TypeError(`a CloudEvent whose source names no organization: ${cloudEvent.source}`);
  const subject = String(cloudEvent.subject || '');
  const slash = subject.indexOf('/');
  if (slash < 0) throw new TypeError(`a CloudEvent whose subject is not <resourceType>/<resourceId>: ${subject}`);
  const time = new Date(cloudEvent.time);
  return {
    id: cloudEvent.id,
    type: cloudEvent.type,
    resourceId: subject.slice(slash + 1),
    resourceType: subject.slice(0, slash),
    organizationId: source[1],
    workspaceId: source[2] === undefined ? null : source[2],
    payload: cloudEvent.data == null ? {} : cloudEvent.data,
    timestamp: Number.isNaN(time.getTime()) ? cloudEvent.time : time.toISOString(),
  };
}

/**
 * A `format` option, checked as the broker checks it.
 * @param {unknown} format
 * @returns {'cpod'|'cloudevents'}
 */
function formatOf(format) {
  if (format === undefined || format === null) return 'cpod';
  if (!FORMATS.includes(format)) {
    throw new TypeError(`format must be ${FORMATS.join(' or ')}, not \`${format}\``);
  }
  return format;
}

/**
 * The broker's query parameters for these options; an unknown option is refused (as the
 * broker refuses an unknown parameter) so that a typo never silently widens a query.
 * @param {Object} options
 * @param {string[]} allowed
 * @returns {URLSearchParams}
 */
function queryOf(options, allowed) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(options || {})) {
    if (!allowed.includes(name)) {
      throw new TypeError(`unknown option \`${name}\`; the options are ${allowed.join(', ')}`);
    }
    if (value === undefined || value === null || value === '') continue;
    if (name === 'types') {
      const types = typeList(value);
      if (types.length > 0) query.set('types', types.join(','));
    } else if (value instanceof Date) {
      query.set(name, value.toISOString());
    } else {
      query.set(name, String(value));
    }
  }
  return query;
}

/** The cPod Events client: `events`, `keys`, `webhooks`, `streamTickets`. */
export class CpodClient {
  /**
   * @param {Object} options
   * @param {string} [options.baseUrl] the broker, e.g. `http://127.0.0.1:8080` (in a page: its
   *   own origin by default)
   * @param {string} options.apiKey `cpk_…`; sent only in the Authorization header
   */
  constructor({ baseUrl, apiKey } = {}) {
    const origin = globalThis.location ? globalThis.location.origin : undefined;
    const base = baseUrl || origin;
    if (!base) throw new TypeError('CpodClient needs a baseUrl');
    if (!apiKey) throw new TypeError('CpodClient needs an apiKey');
    this.baseUrl = String(base).replace(/\/+$/, '');
    /** @private */
    this.apiKey = apiKey;
    this.events = new Events(this);
    this.keys = new Keys(this);
    this.webhooks = new Webhooks(this);
    this.streamTickets = new StreamTickets(this);
  }

  /**
   * A client from `CPOD_BASE_URL` and `CPOD_API_KEY`, where an environment exists (Node, Deno,
   * Bun). A web page has none: use `new CpodClient({baseUrl, apiKey})` there.
   * @param {Record<string, string|undefined>} [env]
   * @returns {CpodClient}
   */
  static fromEnv(env) {
    const source = env || (globalThis.process && globalThis.process.env);
    if (!source) {
      throw new Error(
        'CpodClient.fromEnv() needs an environment with CPOD_BASE_URL and CPOD_API_KEY; in a browser, use new CpodClient({baseUrl, apiKey})',
      );
    }
    if (!source.CPOD_API_KEY) throw new Error('CPOD_API_KEY is not set');
    return new CpodClient({
      baseUrl: source.CPOD_BASE_URL || 'http://127.0.0.1:8080',
      apiKey: source.CPOD_API_KEY,
    });
  }

  /**
   * One request to the broker; answers the parsed JSON body, or throws a {@link CpodError}.
   * @param {string} method
   * @param {string} path e.g. `/v1/events`
   * @param {{query?: URLSearchParams, body?: unknown}} [options]
   * @returns {Promise<any>}
   */
  async request(method, path, { query, body } = {}) {
    const search = query && [...query.keys()].length > 0 ? `?${query}` : '';
    const headers = { Authorization: `Bearer ${this.apiKey}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(`${this.baseUrl}${path}${search}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch {
      throw new CpodError(0, 'network', `cannot reach the broker at ${this.baseUrl}`, null);
    }
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!response.ok) {
      const error = json && json.error;
      throw new CpodError(
        response.status,
        (error && error.code) || 'http_error',
        (error && error.message) || `the broker answered ${response.status}`,
        (error && error.param) || null,
      );
    }
    return json;
  }
}

/** Events: history, ingestion, local subscriptions and live streams. */
class Events {
  /** @param {CpodClient} client */
  constructor(client) {
    this.client = client;
    /** @type {Set<{filter: EventFilter, handler: (event: CpodEvent) => void}>} */
    this.subscriptions = new Set();
  }

  /**
   * One page of history, newest first unless `order: 'asc'`; with `format: 'cloudevents'`, a
   * page of structured CloudEvents.
   * @param {HistoryOptions} [options]
   * @returns {Promise<HistoryPage>}
   */
  async getHistory(options = {}) {
    const page = await this.client.request('GET', '/v1/events', {
      query: queryOf(options, HISTORY_FIELDS),
    });
    return { data: page.data, hasMore: page.hasMore, nextCursor: page.nextCursor };
  }

  /**
   * One event by id; with `{format: 'cloudevents'}`, as a structured CloudEvent.
   * @param {string} id
   * @param {{format?: 'cpod'|'cloudevents'}} [options]
   * @returns {Promise<CpodEvent>}
   */
  get(id, options = {}) {
    return this.client.request('GET', `/v1/events/${encodeURIComponent(id)}`, {
      query: queryOf(options, ['format']),
    });
  }

  /**
   * Stores one event (`{type, resourceId, resourceType, payload?, workspaceId?}`).
   * @param {Object} event
   * @returns {Promise<CpodEvent>}
   */
  emit(event) {
    return this.client.request('POST', '/v1/events', { body: event });
  }

  /**
   * Calls `handler` for every dispatched event that matches `filter`.
   * @param {EventFilter} filter
   * @param {(event: CpodEvent) => void} handler
   * @returns {{unsubscribe: () => void}}
   */
  subscribe(filter, handler) {
    if (typeof handler !== 'function') throw new TypeError('subscribe needs a handler function');
    queryOf(filter, FILTER_FIELDS); // refuses unknown filter fields
    const entry = { filter: { ...filter }, handler };
    this.subscriptions.add(entry);
    return { unsubscribe: () => this.subscriptions.delete(entry) };
  }

  /**
   * Delivers an event to every local subscription whose filter matches it.
   * @param {CpodEvent} event
   * @returns {number} how many handlers were called
   */
  dispatch(event) {
    let delivered = 0;
    for (const entry of [...this.subscriptions]) {
      if (matchesFilter(entry.filter, event)) {
        delivered += 1;
        try {
          entry.handler(event);
        } catch (error) {
          // One failing handler must not keep the event from the others.
          setTimeout(() => {
            throw error;
          });
        }
      }
    }
    return delivered;
  }

  /**
   * Streams the events that match `filter` (filtered by the broker) and dispatches each one to
   * the matching local subscriptions.
   * @param {EventFilter} [filter]
   * @param {StreamOptions} [options]
   * @returns {EventStream}
   */
  stream(filter = {}, options = {}) {
    return new EventStream(this.client, filter, options);
  }
}

/**
 * A live stream over Server-Sent Events, authenticated by stream tickets. The browser's
 * EventSource reconnects by itself (sending `Last-Event-ID`); when the broker refuses the
 * reconnect (the ticket expired) or the connection fails for good, the stream fetches a new
 * ticket and reopens after the last event it saw, with `lastEventId` in the query string.
 */
export class EventStream {
  /**
   * @param {CpodClient} client
   * @param {EventFilter} filter
   * @param {StreamOptions} options
   */
  constructor(client, filter, options) {
    this.client = client;
    this.query = queryOf(filter, FILTER_FIELDS);
    this.options = options;
    this.format = formatOf(options.format);
    if (this.format !== 'cpod') this.query.set('format', this.format);
    /** The id of the last event received: where a reopened stream resumes. */
    this.lastEventId = options.lastEventId || null;
    this.since = options.since instanceof Date ? options.since.toISOString() : options.since;
    /** @type {StreamState} */
    this.state = 'connecting';
    /** How many stream tickets this stream has fetched. */
    this.ticketsFetched = 0;
    this.closed = false;
    this.source = null;
    this.ticket = null;
    /** The broker's clock minus this one's (ms), learnt from each ticket's `expiresAt`. */
    this.clockOffsetMs = 0;
    this.retryTimer = null;
    this.failures = 0;
    this.opened = false;
    this.open();
  }

  /** Stops the stream for good. */
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
    this.setState('closed');
  }

  /** @param {StreamState} state */
  setState(state) {
    if (this.state === state) return;
    this.state = state;
    if (this.options.onStateChange) this.options.onStateChange(state);
  }

  /** A ticket that is not about to expire, fetching one when needed. */
  async freshTicket() {
    if (this.ticket && this.ticket.expiresMs - Date.now() > 5000) return this.ticket.value;
    const ttlSeconds = this.options.ticketTtlSeconds;
    const body = ttlSeconds ? { ttlSeconds } : undefined;
    const answer = await this.client.request('POST', '/v1/stream-tickets', { body });
    this.ticketsFetched += 1;
    const expiresMs = Date.parse(answer.expiresAt);
    this.ticket = { value: answer.ticket, expiresMs };
    // The broker issued the ticket at expiresAt - ttl by its clock, a little before this answer
    // arrived: an offset that errs early (by the answer's latency), so that a `since` built
    // from it may repeat an event rather than skip one.
    const issuedMs = expiresMs - (ttlSeconds || 3600) * 1000;
    if (Number.isFinite(issuedMs)) this.clockOffsetMs = issuedMs - Date.now();
    return answer.ticket;
  }

  async open() {
    if (this.closed) return;
    this.setState(this.opened ? 'reconnecting' : 'connecting');
    let ticket;
    try {
      ticket = await this.freshTicket();
    } catch (error) {
      if (this.closed) return;
      if (isPermanent(error)) {
        // A revoked key, a refused ticketTtlSeconds…: asking again gets the same answer.
        this.close();
        if (this.options.onError) this.options.onError(error);
        return;
      }
      this.retryLater();
      return;
    }
    if (this.closed) return;
    const query = new URLSearchParams(this.query);
    query.set('ticket', ticket);
    if (this.lastEventId) query.set('lastEventId', this.lastEventId);
    else if (this.since) query.set('since', this.since);
    const source = new EventSource(`${this.client.baseUrl}/v1/events/stream?${query}`);
    this.source = source;
    // Set by a `reset` until the next event: the URL of this source still names the unknown
    // resume point, so the browser's own reconnect would only get another reset.
    let resumePointGone = false;
    source.onopen = () => {
      if (this.source !== source) return;
      this.opened = true;
      this.failures = 0;
      this.setState('live');
    };
    source.onmessage = (message) => {
      if (this.source !== source) return;
      let event;
      let cpodEvent;
      try {
        event = JSON.parse(message.data);
        cpodEvent = this.format === 'cloudevents' ? fromCloudEvent(event) : event;
      } catch {
        return;
      }
      this.lastEventId = message.lastEventId || event.id;
      // From now on the browser's reconnects send Last-Event-ID, which wins over the URL.
      resumePointGone = false;
      if (this.options.onEvent) this.options.onEvent(event);
      this.client.events.dispatch(cpodEvent);
    };
    source.addEventListener('reset', (message) => {
      if (this.source !== source) return;
      let reset = { reason: 'unknown_last_event_id', lastEventId: this.lastEventId };
      try {
        reset = JSON.parse(message.data);
      } catch {
        // keep the default description
      }
      // The broker went on live from now: a reopened stream resumes from this time (by the
      // broker's clock), not from the unknown id, which would only get another reset.
      this.lastEventId = null;
      this.since = new Date(Date.now() + this.clockOffsetMs).toISOString();
      resumePointGone = true;
      if (this.options.onReset) this.options.onReset(reset);
    });
    source.onerror = () => {
      if (this.source !== source || this.closed) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused: the ticket expired (a new one fixes that), the key was revoked or the filter
        // is wrong (which nothing fixes). EventSource cannot tell the status; `recover` finds out.
        source.close();
        this.source = null;
        this.ticket = null;
        this.recover();
      } else if (resumePointGone) {
        // The browser would reconnect to the URL with the unknown id: reopen from `since`.
        source.close();
        this.source = null;
        this.open();
      } else {
        // The browser reconnects by itself and sends Last-Event-ID.
        this.setState('reconnecting');
      }
    };
  }

  /**
   * After a refused stream: asks history with the same filter (one event) to learn whether
   * the key and the filter are still good. A 4xx (but 408 and 429) ends the stream with
   * `onError`; otherwise (an expired ticket, a broker that is down) the stream reopens.
   */
  async recover() {
    try {
      const query = new URLSearchParams(this.query);
      query.set('limit', '1');
      await this.client.request('GET', '/v1/events', { query });
    } catch (error) {
      if (this.closed) return;
      if (isPermanent(error)) {
        this.close();
        if (this.options.onError) this.options.onError(error);
        return;
      }
    }
    if (!this.closed) this.retryLater();
  }

  /** Reopens after a growing, jittered delay (0.5 s doubling up to 10 s). */
  retryLater() {
    this.setState('reconnecting');
    const delay = Math.min(10000, 500 * 2 ** this.failures) * (0.8 + Math.random() * 0.4);
    this.failures += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), delay);
  }
}

/** `/v1/keys`. */
class Keys {
  /** @param {CpodClient} client */
  constructor(client) {
    this.client = client;
  }

  /** The calling key: `{id, organizationId, role, name, createdAt}`. */
  me() {
    return this.client.request('GET', '/v1/keys/me');
  }

  /** @param {{organizationId?: string}} [options] */
  async list(options = {}) {
    return (await this.client.request('GET', '/v1/keys', { query: queryOf(options, ['organizationId']) })).data;
  }

  /** @param {{organizationId?: string, role: string, name: string}} key the answer holds `key`, shown once */
  create(key) {
    return this.client.request('POST', '/v1/keys', { body: key });
  }

  /** @param {string} id */
  revoke(id) {
    return this.client.request('DELETE', `/v1/keys/${encodeURIComponent(id)}`);
  }
}

/** `/v1/webhooks`. */
class Webhooks {
  /** @param {CpodClient} client */
  constructor(client) {
    this.client = client;
  }

  /** @param {{organizationId?: string}} [options] */
  async list(options = {}) {
    return (await this.client.request('GET', '/v1/webhooks', { query: queryOf(options, ['organizationId']) })).data;
  }

  /** @param {{url: string, types?: string[], resourceType?: string, description?: string, organizationId?: string}} webhook the answer holds `secret`, shown once */
  create(webhook) {
    return this.client.request('POST', '/v1/webhooks', { body: webhook });
  }

  /** @param {string} id */
  get(id) {
    return this.client.request('GET', `/v1/webhooks/${encodeURIComponent(id)}`);
  }

  /** @param {string} id @param {Object} changes url, types, resourceType, description, enabled */
  update(id, changes) {
    return this.client.request('PATCH', `/v1/webhooks/${encodeURIComponent(id)}`, { body: changes });
  }

  /** @param {string} id */
  delete(id) {
    return this.client.request('DELETE', `/v1/webhooks/${encodeURIComponent(id)}`);
  }

  /** @param {string} id answers `{secret, previousSecretExpiresAt}` */
  rotateSecret(id) {
    return this.client.request('POST', `/v1/webhooks/${encodeURIComponent(id)}/rotate-secret`);
  }

  /** @param {string} id answers `{success, responseStatus, error, durationMs}` */
  test(id) {
    return this.client.request('POST', `/v1/webhooks/${encodeURIComponent(id)}/test`);
  }

  /** @param {string} id @param {{status?: string, limit?: number, cursor?: string}} [options] */
  deliveries(id, options = {}) {
    return this.client.request('GET', `/v1/webhooks/${encodeURIComponent(id)}/deliveries`, {
      query: queryOf(options, ['status', 'limit', 'cursor']),
    });
  }

  /** @param {string} id @param {string} deliveryId */
  retryDelivery(id, deliveryId) {
    return this.client.request(
      'POST',
      `/v1/webhooks/${encodeURIComponent(id)}/deliveries/${encodeURIComponent(deliveryId)}/retry`,
    );
  }
}

/** `/v1/stream-tickets`. */
class StreamTickets {
  /** @param {CpodClient} client */
  constructor(client) {
    this.client = client;
  }

  /** @param {number} [ttlSeconds] answers `{ticket, expiresAt}` */
  create(ttlSeconds) {
    return this.client.request('POST', '/v1/stream-tickets', {
      body: ttlSeconds ? { ttlSeconds } : undefined,
    });
  }
}
