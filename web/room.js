// The live room page (web/index.html): one ChorusClient, one room at a time.
// URL parameters: ?room=R (initial room), ?user=U&level=N (dev login identity),
// ?transport=auto|websocket|poll (default auto).
import { ChorusClient, ChorusError, api, devLogin, isValidRoomId } from '/chorus-client.js';

const PRESETS = ['lobby', 'music', 'games'];
const BLOCK_MAX = 20;          // live.block_max default; only scales the size bars
const MAX_LINES = 200;         // public screen lines kept
const MAX_BANNERS = 4;         // gift banners shown at once
const BANNER_MS = 6000;

const params = new URLSearchParams(location.search);
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

let login = null;
let client = null;
let room = null;
let liked = false;
let pk = null;                 // latest pk payload of the current room
let pkHideTimer = null;
let stats = null;
let pendingLines = [];
let crowd = null;              // {stop()} while simulating

// ------------------------------------------------------------------ boot

async function boot() {
  const user = params.get('user') || undefined;
  const level = params.has('level') ? Number(params.get('level')) : 5;
  try {
    login = await devLogin({ user, level });
    $('me').textContent = `${login.user} (lv ${login.level})`;
  } catch (e) {
    showLoginError(e);
  }
  const transport = params.get('transport') || 'auto';
  client = new ChorusClient({
    token: () => login && login.token,
    transport: login ? transport : 'poll',   // without a user token only polling works
  });
  wireClient();
  wireControls();
  const initial = params.get('room');
  joinRoom(isValidRoomId(initial) ? initial : 'lobby');
  setInterval(tickClock, 1000);
}

function showLoginError(e) {
  const el = $('login-error');
  el.hidden = false;
  el.textContent = `Dev login failed (${e.code || 'error'}: ${e.message}). The page gets its tokens from ` +
    'POST /v1/dev/token, which chorus offers only when it listens on a loopback address. ' +
    'Watching works (short polling); chat, likes, the crowd and PK need the tokens.';
  $('me').textContent = 'anonymous';
}

// ------------------------------------------------------------------ room switching

function joinRoom(next) {
  if (!isValidRoomId(next) || next === room) return;
  if (room) client.unsubscribe(room);
  if (crowd) crowd.stop();
  room = next;
  const url = new URL(location.href);
  url.searchParams.set('room', room);
  history.replaceState(null, '', url);
  document.title = `Chorus — ${room}`;
  $('room-name').textContent = room;
  for (const b of document.querySelectorAll('[data-room]')) b.classList.toggle('active', b.dataset.room === room);
  const opp = $('pk-opponent');
  if (!opp.value || opp.value === room) opp.value = PRESETS.find((r) => r !== room);

  // Reset everything that belongs to the previous room.
  stats = { blocks: 0, messages: 0, maxSize: 0, dropped: 0 };
  renderStats(null);
  $('block-rows').textContent = '';
  const list = $('chat-list');
  list.querySelectorAll('.msg').forEach((n) => n.remove());
  $('chat-empty').hidden = false;
  $('gift-banners').textContent = '';
  pk = null;
  renderPk();
  setOnline(0);
  setLikes(0);
  setFeedback('idle', '');
  $('pk-feedback').textContent = '';

  client.subscribe(room);
  loadLikes(room);
}

async function loadLikes(r) {
  const btn = $('like-button');
  btn.disabled = !login;
  const token = login && login.token;
  try {
    const [counts, state] = await Promise.all([
      api('GET', `/v1/likes/counts?business=live&entities=${encodeURIComponent(r)}`, { token }),
      login ? api('GET', `/v1/likes/state?business=live&user=${encodeURIComponent(login.user)}&entities=${encodeURIComponent(r)}`, { token })
            : Promise.resolve(null),
    ]);
    if (r !== room) return;
    const c = counts.counts && counts.counts[r];
    if (c) client.seedGain(r, 'likes', { likes: c.likes, dislikes: c.dislikes });
    if (state && state.states) setLiked(state.states[r] === 'liked');
  } catch (e) {
    if (r === room) console.warn('likes:', e);
  }
}

// ------------------------------------------------------------------ client events

function wireClient() {
  client.on('status', (s) => {
    const el = $('transport');
    el.dataset.transport = s.transport || '';
    el.dataset.state = s.state;
    const label = { open: 'live', polling: 'polling', connecting: 'connecting', reconnecting: 'reconnecting', closed: 'closed' }[s.state] || s.state;
    let text = s.transport ? `${s.transport === 'websocket' ? 'WebSocket' : 'short polling'} · ${label}` : label;
    if (s.state === 'reconnecting' && s.delay_ms) text += ` in ${(s.delay_ms / 1000).toFixed(1)} s`;
    el.textContent = text;
    el.title = s.reason || client.fallbackReason || '';
    el.className = 'pill ' + (s.state === 'open' ? 'ok' : s.state === 'closed' ? 'bad' : 'warn');
  });
  client.on('online', ({ room: r, online }) => { if (r === room) setOnline(online); });
  client.on('block', (b) => {
    if (b.room !== room) return;
    stats.blocks++;
    stats.messages += b.messages.length;
    stats.maxSize = Math.max(stats.maxSize, b.messages.length);
    stats.dropped += b.dropped || 0;
    renderStats(b);
    addBlockRow(b);
  });
  client.on('message', (m, { room: r }) => {
    if (r !== room) return;
    pendingLines.push(m);
    if (pendingLines.length === 1) queueMicrotask(flushLines);
  });
  client.on('gain', ({ room: r, key, message }) => {
    if (r !== room) return;
    const p = message.payload || {};
    if (key === 'likes') setLikes(p.likes);
    else if (key === 'pk') { pk = p; renderPk(); }
    else if (key === 'presence' && typeof p.online === 'number') setOnline(p.online);
  });
  client.on('error', (e) => {
    console.warn('chorus:', e.code, e.message);
    if (e.code === 'bad_room' || e.code === 'too_many_rooms') setFeedback('error', e.message, e.code);
  });
}

// ------------------------------------------------------------------ public screen

function flushLines() {
  // One block's messages arrive highest priority first; the screen reads in time order.
  const batch = pendingLines.sort((a, b) => (a.created_at - b.created_at) || (BigInt(a.id) < BigInt(b.id) ? -1 : 1));
  pendingLines = [];
  const list = $('chat-list');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  for (const m of batch) {
    if (m.type === 'gift') addGiftBanner(m);
    const line = renderLine(m);
    if (line) list.appendChild(line);
  }
  const lines = list.querySelectorAll('.msg');
  for (let i = 0; i < lines.length - MAX_LINES; i++) lines[i].remove();
  $('chat-empty').hidden = list.querySelector('.msg') !== null;
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function senderOf(m) {
  return m.sender && m.sender.id ? m.sender : null;
}

function renderLine(m) {
  const p = m.payload || {};
  if (m.gain_key === 'likes' || m.gain_key === 'pk' || m.type === 'pk') return null;  // shown by the counters
  const div = document.createElement('div');
  div.className = `msg ${m.type}`;
  div.dataset.testid = 'msg';
  div.dataset.id = m.id;
  div.dataset.type = m.type;
  const s = senderOf(m);
  if (s && login && s.id === login.user) div.classList.add('mine');
  const who = () => {
    const frag = document.createDocumentFragment();
    if (!s) return frag;
    const lv = document.createElement('span');
    lv.className = 'lv';
    lv.textContent = `lv${s.level ?? 0}`;
    const name = document.createElement('span');
    name.className = 'who';
    name.textContent = s.id;
    frag.append(lv, name, document.createTextNode(': '));
    return frag;
  };
  if (m.type === 'chat') {
    div.append(who(), document.createTextNode(String(p.text ?? '')));
  } else if (m.type === 'gift') {
    div.append(who(), document.createTextNode(`sent ${giftName(p)} (${p.value ?? 0})`));
  } else if (m.type === 'notify') {
    div.textContent = p.text || p.event || JSON.stringify(p);
  } else {
    div.append(who(), document.createTextNode(`[${m.type}] ${p.text || JSON.stringify(p)}`));
  }
  return div;
}

function giftName(p) {
  return p.name ? `a ${p.name}` : 'a gift';
}

// Gift banners above the screen: the highest priorities stay; each lives BANNER_MS.
function addGiftBanner(m) {
  const box = $('gift-banners');
  const banners = [...box.children];
  const prio = Number(m.priority) || 0;
  if (banners.length >= MAX_BANNERS) {
    const lowest = banners.reduce((a, b) => (Number(a.dataset.priority) <= Number(b.dataset.priority) ? a : b));
    if (Number(lowest.dataset.priority) >= prio) return;
    lowest.remove();
  }
  const p = m.payload || {};
  const s = senderOf(m);
  const el = document.createElement('div');
  el.className = 'gift-banner' + ((Number(p.value) || 0) >= 520 ? ' big' : '');
  el.dataset.testid = 'gift-banner';
  el.dataset.priority = String(prio);
  el.dataset.id = m.id;
  const icon = document.createElement('span');
  icon.className = 'gift-icon';
  const text = document.createElement('span');
  const b = document.createElement('b');
  b.textContent = s ? s.id : 'someone';
  text.append(b, document.createTextNode(` sent ${giftName(p)} × ${p.value ?? 0}`));
  const pr = document.createElement('span');
  pr.className = 'prio';
  pr.textContent = `priority ${prio}`;
  el.append(icon, text, pr);
  // Keep the banners ordered by priority, highest on top.
  const after = [...box.children].find((c) => Number(c.dataset.priority) < prio);
  box.insertBefore(el, after || null);
  setTimeout(() => el.remove(), BANNER_MS);
}

// ------------------------------------------------------------------ counters and panels

function setOnline(n) {
  const el = $('online-count');
  el.dataset.value = String(n ?? 0);
  el.textContent = String(n ?? 0);
}

function setLikes(n) {
  const el = $('like-count');
  el.dataset.value = String(n ?? 0);
  el.textContent = Number(n ?? 0).toLocaleString('en-US');
}

function setLiked(v) {
  liked = v;
  const btn = $('like-button');
  btn.setAttribute('aria-pressed', v ? 'true' : 'false');
  $('like-label').textContent = v ? 'Liked' : 'Like this room';
}

function renderStats(b) {
  const panel = $('block-panel');
  panel.dataset.blocks = String(stats.blocks);
  panel.dataset.messages = String(stats.messages);
  panel.dataset.maxSize = String(stats.maxSize);
  panel.dataset.dropped = String(stats.dropped);
  panel.dataset.lastSeq = b ? String(b.seq) : '';
  $('blocks-total').textContent = stats.blocks.toLocaleString('en-US');
  $('messages-total').textContent = stats.messages.toLocaleString('en-US');
  $('max-size').textContent = String(stats.maxSize);
  $('drop-count').textContent = stats.dropped.toLocaleString('en-US');
}

function clock(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function addBlockRow(b) {
  const rows = $('block-rows');
  const tr = document.createElement('tr');
  tr.dataset.testid = 'block-row';
  tr.dataset.seq = String(b.seq);
  tr.dataset.size = String(b.messages.length);
  tr.dataset.dropped = String(b.dropped || 0);
  tr.dataset.source = b.source;
  const size = b.messages.length;
  const cells = [
    b.source === 'poll' ? `poll ${b.seq}` : String(b.seq),
    String(size),
    null,
    String(b.dropped || 0),
    clock(b.tick_at || b.received_at),
  ];
  for (const c of cells) {
    const td = document.createElement('td');
    if (c === null) {
      const bar = document.createElement('div');
      bar.className = 'bar' + (size >= BLOCK_MAX ? ' full' : '');
      bar.style.width = `${Math.min(100, (size / BLOCK_MAX) * 100)}%`;
      td.style.width = '35%';
      td.appendChild(bar);
    } else {
      td.textContent = c;
    }
    tr.appendChild(td);
  }
  if (b.source === 'websocket' && b.tick_at) tr.title = `arrived ${Math.max(0, b.received_at + client.clockOffsetMs - b.tick_at)} ms after the tick`;
  rows.prepend(tr);
  while (rows.children.length > 14) rows.lastChild.remove();
}

function renderPk() {
  const bar = $('pk-bar');
  clearTimeout(pkHideTimer);
  if (!pk || !Array.isArray(pk.rooms) || !pk.rooms.includes(room)) {
    bar.hidden = true;
    bar.dataset.state = 'none';
    return;
  }
  const self = pk.rooms.indexOf(room);
  const other = 1 - self;
  const scores = Array.isArray(pk.scores) ? pk.scores.map(Number) : [0, 0];
  const a = scores[self] || 0, b = scores[other] || 0;
  bar.hidden = false;
  bar.dataset.state = pk.state || 'running';
  bar.dataset.pkId = pk.pk_id || '';
  bar.dataset.scoreSelf = String(a);
  bar.dataset.scoreOther = String(b);
  bar.dataset.opponent = pk.rooms[other];
  const share = a + b > 0 ? a / (a + b) : 0.5;
  $('pk-self').style.width = `${(share * 100).toFixed(1)}%`;
  $('pk-self').textContent = `${room} ${a.toLocaleString('en-US')}`;
  $('pk-other').textContent = `${b.toLocaleString('en-US')} ${pk.rooms[other]}`;
  if (pk.state === 'ended') {
    $('pk-title').textContent = a === b ? 'PK over: a draw' : `PK over: ${a > b ? room : pk.rooms[other]} wins`;
    pkHideTimer = setTimeout(() => { pk = null; renderPk(); }, 15000);
  } else {
    $('pk-title').textContent = `PK ${pk.pk_id || ''}: gifts score points`;
  }
  tickClock();
}

function tickClock() {
  if (!pk || pk.state === 'ended' || !client) { $('pk-clock').textContent = ''; return; }
  const left = Math.max(0, Math.round((Number(pk.ends_at) - client.serverNow()) / 1000));
  $('pk-clock').textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')} left`;
}

function setFeedback(state, text, code = '') {
  const el = $('chat-feedback');
  el.dataset.state = state;
  el.dataset.code = code;
  el.textContent = text;
  el.className = 'chat-feedback' + (state === 'error' ? ' error' : ' muted');
}

// ------------------------------------------------------------------ controls

function wireControls() {
  for (const b of document.querySelectorAll('[data-room]')) b.addEventListener('click', () => joinRoom(b.dataset.room));
  document.getElementById('room-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('room-input').value.trim();
    if (!isValidRoomId(v)) { setFeedback('error', 'room ids are 1..64 of A-Z a-z 0-9 _ . : -', 'bad_room'); return; }
    joinRoom(v);
  });

  document.getElementById('chat-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = $('chat-input');
    const text = input.value.trim();
    if (!text || !login) return;
    const r = room;
    setFeedback('sending', 'checking with the moderation app…');
    try {
      const ok = await client.chat(r, text);
      if (r !== room) return;
      input.value = '';
      setFeedback('ok', 'sent — it appears with the next block');
      $('chat-feedback').dataset.id = ok.id;
    } catch (err) {
      if (r !== room) return;
      const why = {
        moderation_rejected: `Not sent: ${err.message}`,
        rate_limited: 'Not sent: too many messages, slow down a little',
        resource_exhausted: 'Not sent: too many messages, slow down a little',   // HTTP 429
        moderation_unavailable: 'Not sent: the moderation app is not ready yet, try again in a few seconds',
        not_subscribed: 'Not sent: still joining the room, try again',
      }[err.code] || `Not sent: ${err.message}`;
      setFeedback('error', why, err.code || 'error');
    }
  });

  $('like-button').addEventListener('click', async () => {
    if (!login) return;
    const r = room;
    const btn = $('like-button');
    btn.disabled = true;
    try {
      const res = await api('POST', '/v1/likes', {
        token: login.token,
        json: { business: 'live', user: login.user, entity: r, action: liked ? 'unlike' : 'like' },
      });
      if (r === room) {
        setLiked(res.state === 'liked');
        if (res.counts) client.seedGain(r, 'likes', res.counts);
      }
    } catch (e) {
      setFeedback('error', `Like failed: ${e.message}`, e.code);
    } finally {
      btn.disabled = false;
    }
  });

  $('crowd-button').addEventListener('click', () => {
    if (crowd) { crowd.stop(); return; }
    if (!login) return;
    crowd = simulateCrowd(room, Number($('crowd-rate').value), Number($('crowd-seconds').value));
  });

  $('pk-start').addEventListener('click', async () => {
    const opponent = $('pk-opponent').value.trim();
    const seconds = Number($('pk-seconds').value) || 60;
    const fb = $('pk-feedback');
    try {
      const res = await api('POST', '/v1/dev/pk', { json: { rooms: [room, opponent], seconds } });
      fb.className = 'small muted';
      fb.textContent = `PK ${res.pk_id} vs ${opponent} started`;
      // The first score update also arrives as the room's pk gain message.
      if (!pk || pk.pk_id !== res.pk_id) {
        pk = { pk_id: res.pk_id, rooms: res.rooms, scores: [0, 0], ends_at: res.ends_at, state: 'running' };
        renderPk();
      }
    } catch (e) {
      fb.className = 'small error';
      fb.textContent = e.message;
    }
  });
}

// ------------------------------------------------------------------ crowd simulation

const NAMES = ['mia', 'leo', 'ava', 'kai', 'zoe', 'sam', 'noor', 'ivy', 'max', 'yui', 'ola', 'tom', 'ren', 'eli'];
const LINES = ['hello!', 'first time here', 'this song is great', 'gg', 'lol', 'again!', 'how long is the stream?',
  'greetings from Lisbon', 'wow', 'who is winning?', 'nice', '666', 'love it', 'turn it up', 'so good'];
const GIFTS = [['rose', 1], ['rose', 1], ['heart', 10], ['heart', 10], ['star', 52], ['rocket', 100], ['castle', 520], ['galaxy', 1314]];
const pick = (a) => a[Math.floor(Math.random() * a.length)];

function fakeMessage(isGift) {
  const sender = { id: `${pick(NAMES)}_${Math.floor(Math.random() * 900 + 100)}`, level: Math.floor(Math.random() * 60) + 1 };
  if (isGift) {
    const [name, value] = pick(GIFTS);
    return { type: 'gift', sender, payload: { name, value } };
  }
  return { type: 'chat', sender, payload: { text: pick(LINES) } };
}

/**
 * Publishes `rate` messages a second for `seconds` through POST /v1/rooms/{room}/messages with
 * the publish token, in batches of up to 100: chat from made-up viewers plus about 8 gifts a
 * second. During a PK part of the gifts go to the opponent, so both sides of the bar move.
 */
function simulateCrowd(r, rate, seconds) {
  const btn = $('crowd-button');
  const out = $('crowd-sent');
  const periodMs = 250;
  const perTick = Math.max(1, Math.round((rate * periodMs) / 1000));
  const endAt = Date.now() + seconds * 1000;
  // About 8 gifts a second whatever the rate: gifts outrank everything, so a block of 20 keeps
  // room for the PK update and the chat of high-level senders (the rest of the chat is dropped).
  const giftShare = Math.min(0.15, 8 / rate);
  let sent = 0, inFlight = false, stopped = false;
  btn.textContent = 'Stop crowd';
  btn.classList.add('active');
  const post = (target, messages) => api('POST', `/v1/rooms/${encodeURIComponent(target)}/messages`, {
    token: login.publish_token, json: { messages },
  }).then((res) => { sent += (res.ids || []).length; });
  const tick = async () => {
    if (stopped) return;
    if (Date.now() >= endAt) { handle.stop(); return; }
    if (inFlight) return;   // never pile requests up behind a slow server
    inFlight = true;
    const byRoom = new Map([[r, []]]);
    const opponent = pk && pk.state !== 'ended' && Array.isArray(pk.rooms) && pk.rooms.includes(r)
      ? pk.rooms[1 - pk.rooms.indexOf(r)] : null;
    for (let i = 0; i < perTick; i++) {
      const gift = Math.random() < giftShare;
      const target = gift && opponent && Math.random() < 0.4 ? opponent : r;
      if (!byRoom.has(target)) byRoom.set(target, []);
      byRoom.get(target).push(fakeMessage(gift));
    }
    const requests = [];
    for (const [target, list] of byRoom) {
      for (let i = 0; i < list.length; i += 100) requests.push(post(target, list.slice(i, i + 100)));
    }
    try {
      await Promise.all(requests);
    } catch (e) {
      out.textContent = `publish failed: ${e.message}`;
      handle.stop();
      return;
    } finally {
      inFlight = false;
    }
    out.dataset.value = String(sent);
    out.textContent = `${sent.toLocaleString('en-US')} published`;
  };
  const timer = setInterval(tick, periodMs);
  const handle = {
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      btn.textContent = 'Simulate crowd';
      btn.classList.remove('active');
      if (crowd === handle) crowd = null;
    },
  };
  tick();
  return handle;
}

boot();
