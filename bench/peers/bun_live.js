// bun_live.js — the Bun peer of `chorus-bench live-fanout` (bench/live_fanout.sh).
//
// A live-room server on Bun.serve (uWebSockets underneath) speaking the subset of Chorus's live
// protocol (docs/live.md) that the benchmark uses, doing the same work per message and per block
// so that server CPU per delivery compares like for like:
//   POST /v1/rooms/{room}/messages  one message or {"messages":[...]} (<= 100); type, payload,
//                                   sender {id, level}, priority, gain_key validated like chorus;
//                                   priority derived by the same rules; a 64-bit time-ordered id
//                                   and created_at stamped; the message JSON rendered once, with
//                                   the same field order and bytes as chorus's; kept for polling
//                                   (60 s, 500 per type) and queued in the room's dispatcher.
//   GET  /v1/ws?token=...           WebSocket (any token is accepted: no HMAC check — chorus does
//                                   verify one per connection, outside the measured window).
//                                   JSON text frames: welcome, subscribed, pong, error, block.
//   GET  /v1/rooms/{room}/messages  short poll (since, limit), same body shape.
//   GET  /healthz, GET /metrics     bunpeer_live_* counters named like chorus's.
// Every block_interval each room with pending messages or members ticks: drops expired messages
// (gift 10 s, pk 5 s, chat 3 s, notify 5 s), takes up to block_max highest priority first (oldest
// first within a priority), carries up to 20 of the rest with priority >= 500 and drops the others,
// serializes the block once and hands it to server.publish(room), which writes it to every
// subscriber (uWS: per-socket backpressure buffer; past backpressureLimit a socket's message is
// dropped, as chorus drops the oldest queued block past outbound_queue_bytes).
// Presence (joins/leaves) becomes one coalesced "notify" gain message per tick, as in chorus.
//
// Differences from chorus, on purpose: one JavaScript thread (pub/sub topics are per process, so
// Bun cannot spread one room over cores the way chorus's shards do); no protobuf frames (chorus
// also encodes each block as protobuf, which this benchmark's JSON subscribers do not use);
// the dispatcher sorts its (small) pending list instead of keeping per-priority FIFOs.
//
// Usage: bun bench/peers/bun_live.js --port 8081 [--host 127.0.0.1] [--block-interval-ms 1000]
//        [--block-max 20] [--backpressure-limit 1048576]
"use strict";

function flag(name, fallback) {
  const i = Bun.argv.indexOf(name);
  return i >= 0 && i + 1 < Bun.argv.length ? Bun.argv[i + 1] : fallback;
}

const HOST = flag("--host", "127.0.0.1");
const PORT = Number(flag("--port", "8081"));
const BLOCK_INTERVAL_MS = Number(flag("--block-interval-ms", "1000"));
const BLOCK_MAX = Number(flag("--block-max", "20"));
const BACKPRESSURE_LIMIT = Number(flag("--backpressure-limit", String(1 << 20)));
const PENDING_MAX = 2000;
const CARRY_MAX = 20;
const CARRY_MIN_PRIORITY = 500;
const MAX_AGE_MS = { gift: 10000, pk: 5000, chat: 3000, notify: 5000 };
const DEFAULT_MAX_AGE_MS = 5000;
const PRIORITY_BASE = { gift: 600, pk: 500, chat: 200, notify: 100 };
const DEFAULT_PRIORITY = 150;
const RETENTION_MS = 60000;
const RETENTION_PER_TYPE = 500;
const MAX_PAYLOAD_BYTES = 4096;
const MAX_BATCH = 100;
const POLL_LIMIT_DEFAULT = 15;
const POLL_LIMIT_MAX = 50;
const EPOCH_MS = 1767225600000n; // 2026-01-01T00:00:00Z, as chorus's IdGenerator

const ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
const TYPE_RE = /^[a-z0-9_]{1,32}$/;

const metrics = {
  published: 0,
  blocks: 0,
  deliveries: 0,
  polls: 0,
  connections: 0,
  dropped: { expired: 0, over_budget: 0, carry_limit: 0, overflow: 0 },
};

// ---- ids ----
let lastMs = 0n;
let seq = 0n;
function nextId(nowMs) {
  let ms = BigInt(nowMs) - EPOCH_MS;
  if (ms <= lastMs) {
    ms = lastMs;
    seq += 1n;
    if (seq === 4096n) {
      seq = 0n;
      ms = ++lastMs;
    }
  } else {
    seq = 0n;
    lastMs = ms;
  }
  return ((ms << 22n) | seq).toString();
}

// ---- messages ----
class BadRequest extends Error {}

function parseDraft(obj) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw new BadRequest("message must be a JSON object");
  const d = { type: "", priority: 0, prioritySet: false, senderId: "", senderLevel: 0, payload: "{}", gainKey: "", giftValue: 0 };
  for (const k of Object.keys(obj)) {
    const v = obj[k];
    if (k === "type") {
      if (typeof v !== "string") throw new BadRequest("type must be a string");
      d.type = v;
    } else if (k === "priority") {
      if (!Number.isInteger(v) || v < 0 || v > 1000) throw new BadRequest("priority must be 0..1000");
      d.priority = v;
      d.prioritySet = true;
    } else if (k === "sender") {
      if (v === null || typeof v !== "object" || Array.isArray(v)) throw new BadRequest("sender must be an object {id, level}");
      for (const sk of Object.keys(v)) {
        if (sk === "id") {
          if (typeof v.id !== "string") throw new BadRequest("sender.id must be a string");
          if (v.id !== "" && !ID_RE.test(v.id)) throw new BadRequest("bad sender.id");
          d.senderId = v.id;
        } else if (sk === "level") {
          if (!Number.isInteger(v.level) || v.level < 0 || v.level > 1000) throw new BadRequest("sender.level must be 0..1000");
          d.senderLevel = v.level;
        } else {
          throw new BadRequest("unknown field sender." + sk);
        }
      }
    } else if (k === "payload") {
      if (v === null || typeof v !== "object" || Array.isArray(v)) throw new BadRequest("payload must be a JSON object");
      d.payload = JSON.stringify(v);
      if (typeof v.value === "number") d.giftValue = v.value;
    } else if (k === "gain_key") {
      if (typeof v !== "string" || v.length > 64) throw new BadRequest("bad gain_key");
      d.gainKey = v;
    } else if (k === "id" || k === "created_at" || k === "room" || k === "user") {
      // assigned by the server
    } else {
      throw new BadRequest("unknown field " + k);
    }
  }
  if (!TYPE_RE.test(d.type)) throw new BadRequest("type is required (1..32 of a-z, 0-9, _)");
  if (d.payload.length > MAX_PAYLOAD_BYTES) throw new BadRequest("payload too large");
  return d;
}

function computePriority(d) {
  if (d.prioritySet) return d.priority;
  let p = PRIORITY_BASE[d.type] ?? DEFAULT_PRIORITY;
  if (d.type === "gift" && d.giftValue > 0) {
    p += Math.min(Math.floor(d.giftValue / 10), 99);
  } else if (d.type === "chat") {
    p += d.senderId === "" ? -1 : Math.min(d.senderLevel, 99);
  }
  return Math.max(0, Math.min(1000, p));
}

// The message JSON, byte for byte as chorus's Finalize() renders it.
function render(m) {
  let s = '{"id":"' + m.id + '","room":"' + m.room + '","type":"' + m.type + '","priority":' + m.priority +
    ',"created_at":' + m.createdAt + ',"sender":{"id":"' + m.senderId + '","level":' + m.senderLevel +
    '},"payload":' + m.payload;
  if (m.gainKey !== "") s += ',"gain_key":' + JSON.stringify(m.gainKey);
  return s + "}";
}

// ---- rooms ----
const rooms = new Map();
let acceptSeq = 0;

function roomOf(id) {
  let r = rooms.get(id);
  if (!r) {
    r = { id, pending: [], gain: new Map(), online: 0, joins: 0, leaves: 0, seq: 0, lastCreated: 0, retained: [], idleTicks: 0 };
    rooms.set(id, r);
  }
  return r;
}

function accept(r, d, now) {
  const createdAt = Math.max(now, r.lastCreated);
  r.lastCreated = createdAt;
  const m = {
    id: nextId(now), room: r.id, type: d.type, priority: computePriority(d), createdAt,
    senderId: d.senderId, senderLevel: d.senderLevel, payload: d.payload, gainKey: d.gainKey,
    order: acceptSeq++, json: "",
  };
  m.json = render(m);
  r.retained.push(m);
  enqueue(r, m);
  return m;
}

function enqueue(r, m) {
  if (m.gainKey !== "") {
    const old = r.gain.get(m.gainKey);
    r.gain.set(m.gainKey, m);
    if (old) {
      const i = r.pending.indexOf(old);
      if (i >= 0) {
        r.pending[i] = m; // coalesced: the newest value replaces the pending one
        return;
      }
    }
  }
  if (r.pending.length >= PENDING_MAX) {
    // Drop the lowest-priority oldest non-gain message, or the new one if it is lowest.
    let victim = -1;
    for (let i = 0; i < r.pending.length; i++) {
      const e = r.pending[i];
      if (e.gainKey !== "") continue;
      if (victim < 0 || e.priority < r.pending[victim].priority) victim = i;
    }
    metrics.dropped.overflow++;
    if (victim < 0 || r.pending[victim].priority > m.priority) return;
    r.pending.splice(victim, 1);
  }
  r.pending.push(m);
}

const byPriority = (a, b) => b.priority - a.priority || a.order - b.order;

function tick(r, now) {
  if (r.joins > 0 || r.leaves > 0) {
    const d = {
      type: "notify", priority: 0, prioritySet: false, senderId: "", senderLevel: 0, gainKey: "presence", giftValue: 0,
      payload: '{"event":"presence","joined":' + r.joins + ',"left":' + r.leaves + ',"online":' + r.online + "}",
    };
    r.joins = r.leaves = 0;
    accept(r, d, now);
  }
  // 1. Expire (current gain values are exempt).
  let kept = [];
  for (const m of r.pending) {
    if (m.gainKey === "" && now - m.createdAt > (MAX_AGE_MS[m.type] ?? DEFAULT_MAX_AGE_MS)) {
      metrics.dropped.expired++;
    } else {
      kept.push(m);
    }
  }
  // 2. Select.
  kept.sort(byPriority);
  const block = kept.slice(0, BLOCK_MAX);
  for (const m of block) if (m.gainKey !== "") r.gain.delete(m.gainKey);
  // 3. Carry or drop the rest.
  const rest = [];
  let carried = 0;
  for (let i = BLOCK_MAX; i < kept.length; i++) {
    const m = kept[i];
    if (m.gainKey !== "") {
      rest.push(m);
    } else if (m.priority >= CARRY_MIN_PRIORITY) {
      if (carried < CARRY_MAX) {
        carried++;
        rest.push(m);
      } else {
        metrics.dropped.carry_limit++;
      }
    } else {
      metrics.dropped.over_budget++;
    }
  }
  r.pending = rest;
  // Retention for polls: at most RETENTION_MS old (per-type caps applied on append would cost a
  // scan per message; trimming here is cheaper and equivalent at the benchmark's rates).
  const floor = now - RETENTION_MS;
  let cut = 0;
  while (cut < r.retained.length && r.retained[cut].createdAt < floor) cut++;
  if (cut > 0) r.retained.splice(0, cut);
  if (r.retained.length > RETENTION_PER_TYPE * 4) r.retained.splice(0, r.retained.length - RETENTION_PER_TYPE * 4);

  if (block.length > 0) {
    r.seq++;
    metrics.blocks++;
    let json = '{"frame":"block","room":"' + r.id + '","seq":' + r.seq + ',"tick_at":' + now + ',"online":' + r.online + ',"messages":[';
    for (let i = 0; i < block.length; i++) {
      if (i) json += ",";
      json += block[i].json;
    }
    json += "]}";
    server.publish(r.id, json);
    metrics.deliveries += r.online;
    r.idleTicks = 0;
  } else if (r.online === 0 && r.pending.length === 0 && ++r.idleTicks > 60) {
    rooms.delete(r.id);
  }
}

setInterval(() => {
  const now = Date.now();
  for (const r of rooms.values()) tick(r, now);
}, BLOCK_INTERVAL_MS);

// ---- HTTP ----
function json(status, body) {
  return new Response(body, { status, headers: { "Content-Type": "application/json" } });
}
function error(status, code, message) {
  return json(status, JSON.stringify({ error: { code, message } }));
}

async function publish(req, room) {
  if (!ID_RE.test(room)) return error(400, "invalid_argument", "bad room id");
  let body;
  try {
    body = JSON.parse(await req.text());
  } catch {
    return error(400, "invalid_argument", "body is not valid JSON");
  }
  let drafts;
  try {
    if (body && typeof body === "object" && "messages" in body && !("type" in body)) {
      if (!Array.isArray(body.messages) || body.messages.length === 0) throw new BadRequest("messages must be a non-empty array");
      if (body.messages.length > MAX_BATCH) throw new BadRequest("at most " + MAX_BATCH + " messages per request");
      drafts = body.messages.map(parseDraft);
    } else {
      drafts = [parseDraft(body)];
    }
  } catch (e) {
    if (e instanceof BadRequest) return error(400, "invalid_argument", e.message);
    throw e;
  }
  const r = roomOf(room);
  const now = Date.now();
  const ids = drafts.map((d) => accept(r, d, now).id);
  metrics.published += drafts.length;
  return json(200, '{"room":"' + room + '","ids":["' + ids.join('","') + '"],"reached":' + r.online + "}");
}

function poll(url, room) {
  if (!ID_RE.test(room)) return error(400, "invalid_argument", "bad room id");
  const now = Date.now();
  let since = Number(url.searchParams.get("since") ?? 0);
  let limit = Number(url.searchParams.get("limit") ?? POLL_LIMIT_DEFAULT);
  if (!Number.isInteger(since) || since < 0 || !Number.isInteger(limit) || limit < 1) {
    return error(400, "invalid_argument", "since and limit must be integers");
  }
  limit = Math.min(limit, POLL_LIMIT_MAX);
  const until = now - 1;
  since = Math.min(Math.max(since, now - RETENTION_MS), until);
  const r = rooms.get(room);
  const out = [];
  let newest = since;
  if (r) {
    for (const m of r.retained) {
      if (m.createdAt <= since || m.createdAt > until) continue;
      out.push(m.json);
      newest = Math.max(newest, m.createdAt);
      if (out.length === limit) break;
    }
  }
  metrics.polls++;
  return json(200, '{"messages":[' + out.join(",") + '],"next_since":' + newest + ',"next_poll_ms":' + (r && r.online >= 1000 ? 2500 : r && r.online >= 100 ? 2000 : 1500) + "}");
}

function metricsText() {
  let s = "";
  const counter = (name, value, labels = "") => {
    s += "# TYPE " + name + " counter\n" + name + labels + " " + value + "\n";
  };
  counter("bunpeer_live_published_total", metrics.published);
  counter("bunpeer_live_blocks_total", metrics.blocks);
  counter("bunpeer_live_deliveries_total", metrics.deliveries);
  counter("bunpeer_live_polls_total", metrics.polls);
  s += "# TYPE bunpeer_live_dropped_total counter\n";
  for (const [reason, v] of Object.entries(metrics.dropped)) s += 'bunpeer_live_dropped_total{reason="' + reason + '"} ' + v + "\n";
  s += "# TYPE bunpeer_live_connections gauge\nbunpeer_live_connections " + metrics.connections + "\n";
  return s;
}

const ROOM_PATH = /^\/v1\/rooms\/([^/]+)\/messages$/;
let connectionSeq = 0;

const server = Bun.serve({
  hostname: HOST,
  port: PORT,
  async fetch(req, srv) {
    const url = new URL(req.url);
    if (url.pathname === "/v1/ws") {
      if (!url.searchParams.get("token")) return error(401, "unauthenticated", "missing token");
      const user = "u" + ++connectionSeq;
      if (srv.upgrade(req, { data: { user, connection: connectionSeq, rooms: new Set() } })) return undefined;
      return error(400, "invalid_argument", "not a WebSocket upgrade");
    }
    const m = ROOM_PATH.exec(url.pathname);
    if (m) {
      if (req.method === "POST") return publish(req, m[1]);
      if (req.method === "GET") return poll(url, m[1]);
      return error(405, "method_not_allowed", "GET or POST");
    }
    if (url.pathname === "/healthz") return json(200, '{"status":"ok"}');
    if (url.pathname === "/metrics") return new Response(metricsText(), { headers: { "Content-Type": "text/plain; version=0.0.4" } });
    return error(404, "not_found", "no route");
  },
  websocket: {
    maxPayloadLength: 4096,
    idleTimeout: 60,
    sendPings: true,
    perMessageDeflate: false,
    backpressureLimit: BACKPRESSURE_LIMIT,
    closeOnBackpressureLimit: false,
    open(ws) {
      metrics.connections++;
      ws.send('{"frame":"welcome","user":"' + ws.data.user + '","connection":"' + ws.data.connection + '","heartbeat_ms":25000}');
    },
    message(ws, data) {
      let op;
      try {
        op = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
      } catch {
        ws.send('{"frame":"error","code":"bad_frame","message":"text frame must be a JSON object"}');
        return;
      }
      if (op === null || typeof op !== "object" || typeof op.op !== "string") {
        ws.send('{"frame":"error","code":"bad_frame","message":"frame needs a string field \\"op\\""}');
        return;
      }
      if (op.op === "ping") {
        ws.send('{"frame":"pong","ts":' + (Number.isInteger(op.ts) ? op.ts : 0) + ',"server_ts":' + Date.now() + "}");
      } else if (op.op === "subscribe" || op.op === "unsubscribe") {
        if (typeof op.room !== "string" || !ID_RE.test(op.room)) {
          ws.send('{"frame":"error","code":"bad_room","message":"bad room id"}');
          return;
        }
        const r = roomOf(op.room);
        if (op.op === "subscribe") {
          if (!ws.data.rooms.has(op.room)) {
            if (ws.data.rooms.size >= 8) {
              ws.send('{"frame":"error","code":"too_many_rooms","message":"a connection may be in at most 8 rooms"}');
              return;
            }
            ws.data.rooms.add(op.room);
            ws.subscribe(op.room);
            r.online++;
            r.joins++;
          }
          ws.send('{"frame":"subscribed","room":"' + op.room + '","online":' + r.online + "}");
        } else {
          if (!ws.data.rooms.delete(op.room)) {
            ws.send('{"frame":"error","code":"not_subscribed","message":"not subscribed"}');
            return;
          }
          ws.unsubscribe(op.room);
          r.online--;
          r.leaves++;
          ws.send('{"frame":"unsubscribed","room":"' + op.room + '"}');
        }
      } else {
        ws.send('{"frame":"error","code":"unknown_op","message":"unknown op"}');
      }
    },
    close(ws) {
      metrics.connections--;
      for (const room of ws.data.rooms) {
        const r = roomOf(room);
        r.online--;
        r.leaves++;
      }
    },
  },
});

console.error("bun_live: ready on http://" + HOST + ":" + server.port + " (bun " + Bun.version + ")");
