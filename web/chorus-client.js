// chorus-client.js — the browser client of Chorus live rooms (docs/web.md).
//
// One ChorusClient holds one connection to the live service for any number of rooms:
//   - WebSocket (`/v1/ws?format=json`) with reconnect, exponential backoff and jitter, an
//     app-level ping every heartbeat_ms, and re-subscription of every room after a reconnect;
//   - short polling of `/v1/rooms/{room}/messages` when `GET /v1/connect` answers "poll", when
//     the WebSocket fails to open `maxWsFailures` times in a row, or when asked to;
//   - dedupe by message id (ids are 64-bit decimal strings, compared as BigInt), the gain rule
//     (the latest message per gain_key wins, by created_at then id), viewer chat.
// Plain ES module, no dependencies. Works in browsers and in Node 18+ (pass WebSocket/fetch).

export const ROOM_ID = /^[A-Za-z0-9_.:-]{1,64}$/;

/** True when `room` is a valid room id (1..64 of [A-Za-z0-9_.:-]). */
export function isValidRoomId(room) {
  return typeof room === 'string' && ROOM_ID.test(room);
}

/** Compares two message ids (decimal strings of 64-bit integers): -1, 0 or 1. */
export function compareIds(a, b) {
  const x = BigInt(a), y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** The gain rule: true when message `m` supersedes `current` (later created_at, then larger id). */
export function isNewer(m, current) {
  if (!current) return true;
  const a = Number(m.created_at) || 0, b = Number(current.created_at) || 0;
  if (a !== b) return a > b;
  return compareIds(m.id ?? '0', current.id ?? '0') > 0;
}

/** Delay before reconnect attempt `attempt` (0-based): exponential with "equal jitter". */
export function backoffDelay(attempt, { initialMs = 500, maxMs = 15000, factor = 2 } = {}, random = Math.random) {
  const cap = Math.min(maxMs, initialMs * Math.pow(factor, Math.max(0, attempt)));
  return Math.round(cap / 2 + random() * (cap / 2));
}

/** An error answered by the server (HTTP error body or WebSocket error frame). */
export class ChorusError extends Error {
  constructor(code, message, { status = 0, source = '', room = undefined } = {}) {
    super(message || code);
    this.name = 'ChorusError';
    this.code = code;
    this.status = status;
    this.source = source;
    if (room !== undefined) this.room = room;
  }
}

/** Minimal event emitter: on/once return an unsubscribe function. */
export class Emitter {
  #handlers = new Map();
  on(event, fn) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(fn);
    return () => this.off(event, fn);
  }
  once(event, fn) {
    const off = this.on(event, (...args) => { off(); fn(...args); });
    return off;
  }
  off(event, fn) {
    const set = this.#handlers.get(event);
    if (set) set.delete(fn);
  }
  emit(event, ...args) {
    const set = this.#handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try { fn(...args); } catch (e) { console.error(`chorus-client: '${event}' handler threw`, e); }
    }
  }
}

/** Reads an HTTP answer: the JSON body, or throws ChorusError from {"error":{code,message}}. */
export async function readJson(res, source = '') {
  let body = null;
  const text = await res.text();
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!res.ok) {
    const err = body && body.error ? body.error : {};
    throw new ChorusError(err.code || `http_${res.status}`, err.message || text || res.statusText,
                          { status: res.status, source });
  }
  return body;
}

// Error frame codes that answer a `subscribe` rather than a `chat`.
const SUBSCRIBE_CODES = new Set(['bad_room', 'too_many_rooms']);

/**
 * The live-room client. Options (all optional except token for WebSocket and chat):
 *   baseUrl        origin of the chorus HTTP server (default: the page's origin)
 *   token          user token, or a function returning one (or a Promise of one); called on
 *                  every (re)connect, so it can refresh an expired token
 *   transport      'auto' (ask GET /v1/connect), 'websocket' or 'poll'
 *   maxWsFailures  consecutive WebSocket attempts that end before `welcome` until the client
 *                  falls back to polling (default 3)
 *   wsRetryMs      while on fallback polling, try the WebSocket again this often (default
 *                  60000; 0 = never)
 *   backoff        {initialMs: 500, maxMs: 15000, factor: 2} for reconnects and failed polls
 *   openTimeoutMs  a WebSocket without `welcome` after this long counts as failed (10000)
 *   history        on subscribe, load the room's recent messages once through the polling
 *                  endpoint (default true); after a reconnect the gap is always filled that way
 *   pollLimit      `limit` of each poll (default 50, the server's maximum)
 *   dedupeSize     how many recent ids are remembered per room for dedupe (default 10000)
 *   chatTimeoutMs  a chat without an answer is rejected with code "timeout" (default 10000)
 *   WebSocket, fetch  implementations to use (default: the globals)
 *
 * Events (client.on(name, fn)):
 *   status       {state, transport, attempt?, delay_ms?, reason?}; state is one of
 *                'connecting', 'open', 'reconnecting', 'polling', 'closed'
 *   welcome      the server's welcome frame {user, connection, heartbeat_ms}
 *   subscribed   {room, online}        unsubscribed {room}
 *   block        {room, seq, tick_at, online, dropped, messages, source, received_at}: every
 *                WebSocket block as sent (messages not deduped), and every poll answer with
 *                source 'poll' (seq = the client's own poll counter, dropped = 0)
 *   message      (message, {room, source}) once per id: 'websocket', 'poll', 'history', 'private'
 *   gain         {room, key, message}: a gain message that won the gain rule for its key
 *   private      a private message (deduped)
 *   online       {room, online}
 *   pong         {rtt_ms, offset_ms}
 *   fallback     {reason}: switched from WebSocket to polling
 *   error        ChorusError: errors not tied to a chat() call (subscribe refused, poll failed, …)
 */
export class ChorusClient extends Emitter {
  constructor(options = {}) {
    super();
    const loc = globalThis.location;
    this.options = {
      baseUrl: options.baseUrl || (loc ? loc.origin : 'http://127.0.0.1:8080'),
      token: options.token,
      transport: options.transport || 'auto',
      maxWsFailures: options.maxWsFailures ?? 3,
      wsRetryMs: options.wsRetryMs ?? 60000,
      backoff: { initialMs: 500, maxMs: 15000, factor: 2, ...(options.backoff || {}) },
      openTimeoutMs: options.openTimeoutMs ?? 10000,
      history: options.history ?? true,
      pollLimit: options.pollLimit ?? 50,
      dedupeSize: options.dedupeSize ?? 10000,
      chatTimeoutMs: options.chatTimeoutMs ?? 10000,
    };
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._fetch = options.fetch || globalThis.fetch.bind(globalThis);

    this.rooms = new Set();         // rooms the caller wants
    this.transport = null;          // 'websocket' | 'poll' once started
    this.state = 'idle';
    this.user = null;               // from the welcome frame
    this.heartbeatMs = 25000;
    this.clockOffsetMs = 0;         // server wall clock - local wall clock (from pongs)
    this.fallbackReason = '';

    this._started = false;
    this._closed = false;
    this._ws = null;
    this._wsUrls = [];
    this._wsUrlIndex = 0;
    this._wsFailures = 0;
    this._attempt = 0;
    this._everWelcomed = false;
    this._reconnectTimer = null;
    this._probeTimer = null;
    this._pingTimer = null;
    this._lastFrameAt = 0;
    this._pendingChats = [];
    this._polls = new Map();        // room -> {timer, since, seq, failures, stopped}
    this._lastCreatedAt = new Map();// room -> newest created_at seen
    this._gains = new Map();        // room \0 key -> message
    this._seen = new Map();         // room ('' for private) -> {ids: Set, order: []}
  }

  // ------------------------------------------------------------------ public API

  /** Starts the client (also started by the first subscribe). Resolves once a transport is chosen. */
  async connect() {
    if (this._started) return;
    this._started = true;
    this._closed = false;
    let mode = this.options.transport;
    if (mode === 'auto') {
      if (!this._WebSocket) {
        mode = 'poll';
        this.fallbackReason = 'no WebSocket in this environment';
      } else {
        const room = [...this.rooms][0] || 'lobby';
        try {
          const c = await this._get(`/v1/connect?room=${encodeURIComponent(room)}`, 'connect');
          if (typeof c.online === 'number' && this.rooms.has(room)) this.emit('online', { room, online: c.online });
          if (c.transport === 'poll') {
            mode = 'poll';
            this.fallbackReason = c.reason || 'server asked for polling';
          } else {
            mode = 'websocket';
            this._wsUrls = Array.isArray(c.urls) ? c.urls.filter(Boolean) : [];
          }
        } catch (e) {
          mode = 'websocket';  // the WebSocket path falls back by itself if it fails too
        }
      }
    }
    if (this._closed) return;
    if (mode === 'poll') {
      this._enterPolling(this.fallbackReason || 'polling requested', false);
    } else {
      this.transport = 'websocket';
      this._openWs();
    }
  }

  /** Stops everything; the client can be connected again afterwards. */
  close() {
    this._closed = true;
    this._started = false;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._probeTimer);
    this._stopPing();
    for (const room of [...this._polls.keys()]) this._stopPoll(room);
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      try { ws.close(1000, 'client closed'); } catch { /* already closed */ }
    }
    for (const p of this._pendingChats.splice(0)) {
      clearTimeout(p.timer);
      p.reject(new ChorusError('closed', 'client closed', { source: 'chat', room: p.room }));
    }
    this._setState('closed');
  }

  /** Joins `room`: blocks arrive as 'block'/'message' events. Starts the client if needed. */
  subscribe(room) {
    if (!isValidRoomId(room)) throw new ChorusError('bad_room', `room id must be 1..64 of [A-Za-z0-9_.:-]: ${room}`);
    if (this.rooms.has(room)) return;
    this.rooms.add(room);
    if (!this._started) { this.connect(); return; }
    if (this.transport === 'poll') {
      this._startPoll(room, this.options.history ? 0 : null);
    } else if (this._wsOpen()) {
      this._send({ op: 'subscribe', room });
      if (this.options.history) this._catchUp(room, 0);
    }
  }

  /** Leaves `room`. */
  unsubscribe(room) {
    if (!this.rooms.delete(room)) return;
    this._stopPoll(room);
    if (this._wsOpen()) this._send({ op: 'unsubscribe', room });
    for (const key of [...this._gains.keys()]) if (key.startsWith(room + '\u0000')) this._gains.delete(key);
    this._lastCreatedAt.delete(room);
    this._seen.delete(room);         // joining again shows the room's history again
  }

  /**
   * Viewer chat: resolves {room, id} when moderation accepted it (the message itself arrives
   * in a later block); rejects with ChorusError code moderation_rejected, rate_limited,
   * moderation_unavailable, not_subscribed, bad_frame, timeout, …
   */
  async chat(room, text) {
    if (this.transport !== 'websocket' || !this._wsOpen()) {
      const token = await this._token();
      const res = await this._fetch(this._url(`/v1/rooms/${encodeURIComponent(room)}/chat`), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
        body: JSON.stringify({ text }),
      });
      return readJson(res, 'chat');
    }
    return new Promise((resolve, reject) => {
      const pending = { room, resolve, reject, timer: null };
      pending.timer = setTimeout(() => {
        const i = this._pendingChats.indexOf(pending);
        if (i >= 0) this._pendingChats.splice(i, 1);
        reject(new ChorusError('timeout', 'no answer to chat', { source: 'chat', room }));
      }, this.options.chatTimeoutMs);
      this._pendingChats.push(pending);
      this._send({ op: 'chat', room, text });
    });
  }

  /** The latest message of `key` in `room` under the gain rule (or undefined). */
  gain(room, key) {
    return this._gains.get(room + '\u0000' + key);
  }

  /**
   * Seeds the gain state of (room, key) with a value read elsewhere (e.g. GET /v1/likes/counts),
   * valid as of `createdAt` (default: the server's clock now, as estimated from pongs). Later
   * messages win; older ones are ignored. Emits 'gain' when the seed wins.
   */
  seedGain(room, key, payload, createdAt = this.serverNow()) {
    const m = { id: '0', room, type: 'seed', created_at: createdAt, payload, gain_key: key, seeded: true };
    this._applyGain(room, m);
  }

  /** The server's wall clock now, estimated from pongs (local clock when unknown). */
  serverNow() {
    return Date.now() + this.clockOffsetMs;
  }

  // ------------------------------------------------------------------ WebSocket

  _wsOpen() {
    return this._ws && this._ws.readyState === 1 && this._ws._welcomed;
  }

  _wsUrl(token) {
    let base = this._wsUrls.length ? this._wsUrls[this._wsUrlIndex % this._wsUrls.length] : '';
    if (!base) {
      const u = new URL('/v1/ws', this.options.baseUrl);
      u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
      base = u.toString();
    }
    const u = new URL(base);
    u.searchParams.set('format', 'json');
    if (token) u.searchParams.set('token', token);
    return u.toString();
  }

  async _openWs(probe = false) {
    if (this._closed) return;
    if (!probe) this._setState(this._everWelcomed ? 'reconnecting' : 'connecting', { attempt: this._attempt });
    let token;
    try {
      token = await this._token();
    } catch (e) {
      this.emit('error', e instanceof ChorusError ? e : new ChorusError('token', String(e), { source: 'token' }));
      return this._wsEnded(null, false, probe);
    }
    if (this._closed) return;
    let ws;
    try {
      ws = new this._WebSocket(this._wsUrl(token));
    } catch (e) {
      return this._wsEnded(null, false, probe);
    }
    ws._welcomed = false;
    ws._probe = probe;
    if (!probe) this._ws = ws;
    const openTimer = setTimeout(() => {
      if (!ws._welcomed) { try { ws.close(); } catch { /* ignore */ } }
    }, this.options.openTimeoutMs);
    ws.onmessage = (e) => {
      if (typeof e.data !== 'string') return;  // we asked for JSON frames
      let f;
      try { f = JSON.parse(e.data); } catch { return; }
      this._lastFrameAt = Date.now();
      if (f.frame === 'welcome') {
        clearTimeout(openTimer);
        if (ws._probe) this._promoteProbe(ws);
      }
      if (ws !== this._ws) return;
      this._onFrame(ws, f);
    };
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      clearTimeout(openTimer);
      const wasCurrent = ws === this._ws;
      if (wasCurrent) { this._ws = null; this._stopPing(); }
      if (wasCurrent || ws._probe) this._wsEnded(ws, ws._welcomed, ws._probe);
    };
    ws.onclose = end;
    ws.onerror = () => { /* onclose follows */ };
  }

  _promoteProbe(ws) {
    // The WebSocket works again: leave polling.
    ws._probe = false;
    for (const room of [...this._polls.keys()]) this._stopPoll(room);
    this._ws = ws;
    this.transport = 'websocket';
    this.fallbackReason = '';
  }

  _wsEnded(ws, welcomed, probe) {
    if (this._closed) return;
    if (probe) {  // still polling; try again later
      this._scheduleProbe();
      return;
    }
    // Chats in flight on this socket got no answer.
    for (const p of this._pendingChats.splice(0)) {
      clearTimeout(p.timer);
      p.reject(new ChorusError('disconnected', 'connection lost before the chat was answered', { source: 'chat', room: p.room }));
    }
    if (!welcomed) {
      this._wsFailures++;
      this._wsUrlIndex++;
      if (this._wsFailures >= this.options.maxWsFailures) {
        this._enterPolling(`WebSocket failed ${this._wsFailures} times in a row`, true);
        return;
      }
    }
    const delay = backoffDelay(this._attempt, this.options.backoff);
    this._attempt++;
    this._setState('reconnecting', { attempt: this._attempt, delay_ms: delay });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._openWs(), delay);
  }

  _onFrame(ws, f) {
    switch (f.frame) {
      case 'welcome': {
        ws._welcomed = true;
        this._everWelcomed = true;
        this._wsFailures = 0;
        this._attempt = 0;
        this.user = f.user;
        this.heartbeatMs = Number(f.heartbeat_ms) > 0 ? Number(f.heartbeat_ms) : 25000;
        this.transport = 'websocket';
        this._setState('open');
        this.emit('welcome', f);
        for (const room of this.rooms) {
          this._send({ op: 'subscribe', room });
          // After a reconnect (or leaving fallback polling), fill the gap through the polling
          // endpoint from the newest message seen (dedupe drops overlaps); on a first
          // connection load the history when asked to.
          const since = this._lastCreatedAt.get(room);
          if (since) this._catchUp(room, since);
          else if (this.options.history) this._catchUp(room, 0);
        }
        this._startPing();
        break;
      }
      case 'subscribed':
        this.emit('subscribed', { room: f.room, online: f.online });
        this.emit('online', { room: f.room, online: f.online });
        break;
      case 'unsubscribed':
        this.emit('unsubscribed', { room: f.room });
        break;
      case 'block': {
        if (!this.rooms.has(f.room)) break;
        const messages = Array.isArray(f.messages) ? f.messages : [];
        this.emit('block', {
          room: f.room, seq: f.seq, tick_at: f.tick_at, online: f.online, dropped: Number(f.dropped) || 0,
          messages, source: 'websocket', received_at: Date.now(),
        });
        if (typeof f.online === 'number') this.emit('online', { room: f.room, online: f.online });
        for (const m of messages) this._deliver(m, f.room, 'websocket');
        break;
      }
      case 'private':
        if (f.message && this._remember('', f.message.id)) {
          this.emit('private', f.message);
          this.emit('message', f.message, { room: null, source: 'private' });
        }
        break;
      case 'pong': {
        const now = Date.now();
        const sent = Number(f.ts);
        if (sent > 0) {
          const rtt = Math.max(0, now - sent);
          if (Number(f.server_ts) > 0) this.clockOffsetMs = Math.round(Number(f.server_ts) - (sent + now) / 2);
          this.emit('pong', { rtt_ms: rtt, offset_ms: this.clockOffsetMs });
        }
        break;
      }
      case 'chat_ok': {
        const i = this._pendingChats.findIndex((p) => p.room === f.room);
        const p = i >= 0 ? this._pendingChats.splice(i, 1)[0] : this._pendingChats.shift();
        if (p) { clearTimeout(p.timer); p.resolve({ room: f.room, id: f.id }); }
        break;
      }
      case 'error': {
        const err = new ChorusError(f.code || 'error', f.message, { source: 'websocket', room: f.room });
        if (!SUBSCRIBE_CODES.has(err.code) && this._pendingChats.length) {
          const p = this._pendingChats.shift();
          clearTimeout(p.timer);
          err.source = 'chat';
          err.room = p.room;
          p.reject(err);
        } else {
          this.emit('error', err);
        }
        break;
      }
      default:
        break;
    }
  }

  _send(obj) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(obj));
  }

  _startPing() {
    this._stopPing();
    const ping = () => {
      const ws = this._ws;
      if (!ws || ws.readyState !== 1) return;
      // Nothing (not even a pong) for two heartbeats: the connection is dead, reconnect.
      if (Date.now() - this._lastFrameAt > 2 * this.heartbeatMs + 5000) {
        try { ws.close(4000, 'heartbeat timeout'); } catch { /* ignore */ }
        return;
      }
      this._send({ op: 'ping', ts: Date.now() });
    };
    this._send({ op: 'ping', ts: Date.now() });  // first one at once: clock offset for seedGain
    this._pingTimer = setInterval(ping, this.heartbeatMs);
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  // ------------------------------------------------------------------ polling

  _enterPolling(reason, fallback) {
    this.transport = 'poll';
    this.fallbackReason = reason;
    clearTimeout(this._reconnectTimer);
    if (fallback) this.emit('fallback', { reason });
    this._setState('polling', { reason });
    for (const room of this.rooms) {
      // A fallback continues from what the WebSocket delivered; a fresh start loads history.
      const since = this._lastCreatedAt.get(room) ?? (this.options.history ? 0 : null);
      this._startPoll(room, since);
    }
    if (fallback) this._scheduleProbe();
  }

  _scheduleProbe() {
    clearTimeout(this._probeTimer);
    if (!this.options.wsRetryMs || this._closed || !this._WebSocket) return;
    this._probeTimer = setTimeout(() => {
      if (this.transport === 'poll' && !this._closed) this._openWs(true);
    }, this.options.wsRetryMs);
  }

  _startPoll(room, since) {
    if (this._polls.has(room)) return;
    const p = { timer: null, since: since ?? this.serverNow(), seq: 0, failures: 0, stopped: false };
    this._polls.set(room, p);
    const tick = async () => {
      if (p.stopped) return;
      let next;
      try {
        const q = `since=${p.since}&limit=${this.options.pollLimit}`;
        const r = await this._get(`/v1/rooms/${encodeURIComponent(room)}/messages?${q}`, 'poll');
        if (p.stopped) return;
        p.failures = 0;
        if (Number(r.next_since) > 0) p.since = r.next_since;
        const messages = Array.isArray(r.messages) ? r.messages : [];
        p.seq++;
        this.emit('block', {
          room, seq: p.seq, tick_at: Date.now(), online: undefined, dropped: 0,
          messages, source: 'poll', received_at: Date.now(),
        });
        for (const m of messages) this._deliver(m, room, 'poll');
        next = Number(r.next_poll_ms) > 0 ? Number(r.next_poll_ms) : 2000;
      } catch (e) {
        if (p.stopped) return;
        if (p.failures === 0) this.emit('error', e instanceof ChorusError ? e : new ChorusError('poll_failed', String(e), { source: 'poll', room }));
        next = backoffDelay(p.failures, this.options.backoff);
        p.failures++;
      }
      p.timer = setTimeout(tick, next);
    };
    tick();
  }

  _stopPoll(room) {
    const p = this._polls.get(room);
    if (!p) return;
    p.stopped = true;
    clearTimeout(p.timer);
    this._polls.delete(room);
  }

  async _catchUp(room, since) {
    try {
      const r = await this._get(`/v1/rooms/${encodeURIComponent(room)}/messages?since=${since}&limit=${this.options.pollLimit}`, 'history');
      if (!this.rooms.has(room)) return;
      for (const m of r.messages || []) this._deliver(m, room, 'history');
    } catch (e) {
      // History is a convenience; live delivery goes on without it.
    }
  }

  // ------------------------------------------------------------------ messages

  // Dedupe per room (a broadcast carries one id into every room): true the first time.
  _remember(room, id) {
    if (id === undefined || id === null) return true;
    let seen = this._seen.get(room);
    if (!seen) this._seen.set(room, (seen = { ids: new Set(), order: [] }));
    const key = String(id);
    if (seen.ids.has(key)) return false;
    seen.ids.add(key);
    seen.order.push(key);
    if (seen.order.length > this.options.dedupeSize) {
      for (const d of seen.order.splice(0, seen.order.length - this.options.dedupeSize)) seen.ids.delete(d);
    }
    return true;
  }

  _deliver(m, room, source) {
    if (!m) return;
    const r = m.room || room;
    if (!this.rooms.has(r) || !this._remember(r, m.id)) return;
    if (Number(m.created_at) > (this._lastCreatedAt.get(r) || 0)) this._lastCreatedAt.set(r, Number(m.created_at));
    this.emit('message', m, { room: r, source });
    if (m.gain_key) this._applyGain(r, m);
  }

  _applyGain(room, m) {
    const key = room + '\u0000' + m.gain_key;
    if (!isNewer(m, this._gains.get(key))) return;
    this._gains.set(key, m);
    this.emit('gain', { room, key: m.gain_key, message: m });
  }

  // ------------------------------------------------------------------ plumbing

  _url(path) {
    return new URL(path, this.options.baseUrl).toString();
  }

  async _get(path, source) {
    const res = await this._fetch(this._url(path), { cache: 'no-store' });
    return readJson(res, source);
  }

  async _token() {
    const t = this.options.token;
    return typeof t === 'function' ? await t() : t;
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.emit('status', { state, transport: this.transport, ...extra });
  }
}

// ------------------------------------------------------------------ helpers for the pages

/**
 * Dev login (loopback binds only): POST /v1/dev/token → {user, level, token, publish_token,
 * invoke_token, expires_at}. Cached in sessionStorage per tab unless `fresh`.
 */
export async function devLogin({ baseUrl = globalThis.location?.origin, user, level, fresh = false } = {}) {
  const key = `chorus.dev.${user || ''}`;
  const store = globalThis.sessionStorage;
  if (!fresh && store) {
    try {
      const cached = JSON.parse(store.getItem(key) || 'null');
      if (cached && cached.expires_at * 1000 > Date.now() + 60000) return cached;
    } catch { /* ignore */ }
  }
  const body = {};
  if (user) body.user = user;
  if (level !== undefined) body.level = level;
  const res = await fetch(new URL('/v1/dev/token', baseUrl), {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  const login = await readJson(res, 'dev_token');
  if (store) { try { store.setItem(key, JSON.stringify(login)); } catch { /* ignore */ } }
  return login;
}

/** fetch + readJson with a bearer token and an optional JSON body. */
export async function api(method, path, { token, json, body, headers = {}, baseUrl = globalThis.location?.origin } = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  let payload = body;
  if (json !== undefined) { h['Content-Type'] = 'application/json'; payload = JSON.stringify(json); }
  const res = await fetch(new URL(path, baseUrl), { method, headers: h, body: payload, cache: 'no-store' });
  return readJson(res, path);
}
