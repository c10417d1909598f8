// The browser test cases (run by run.mjs, in this order). Each gets a TestContext `t`:
// t.chorus (the server and its API), t.openRoom(label, room, user), t.newPage(label), t.log.
// Every wait has a timeout and fails the case; nothing sleeps and then asserts.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

const suffix = () => Math.random().toString(36).slice(2, 8);
const sel = (id) => `[data-testid="${id}"]`;

/** The message element of `id` in the page's public screen. */
const msgById = (page, id) => page.locator(`${sel('chat-list')} ${sel('msg')}[data-id="${id}"]`);
const msgByText = (page, text) => page.locator(`${sel('chat-list')} ${sel('msg')}`, { hasText: text });

/** Waits until the numeric data attribute `attr` of the element with test id `id` satisfies `op value`. */
function waitForData(page, id, attr, op, value, timeout = 15000) {
  return page.waitForFunction(([id, attr, op, value]) => {
    const el = document.querySelector(`[data-testid="${id}"]`);
    if (!el) return false;
    const v = Number(el.dataset[attr]);
    return op === '>' ? v > value : op === '>=' ? v >= value : op === '==' ? v === value : false;
  }, [id, attr, op, value], { timeout, polling: 100 });
}

const dataOf = (page, id) => page.evaluate((id) => ({ ...document.querySelector(`[data-testid="${id}"]`).dataset }), id);

const normalise = (s) => String(s).toUpperCase().replace(/[^A-Z0-9]+/g, ' ').trim();

export const CASES = [
  {
    name: 'a published message renders in two browser contexts',
    timeoutMs: 40000,
    async run(t) {
      const room = `t1-${suffix()}`;
      const a = await t.openRoom('alice', room, 'alice-t1');
      const b = await t.openRoom('bob', room, 'bob-t1');
      const { publish_token } = await t.chorus.devToken('publisher-t1');
      const text = `hello from the API ${suffix()}`;
      const chat = await t.chorus.publish(room, { type: 'chat', sender: { id: 'carol', level: 12 }, payload: { text } }, publish_token);
      const gift = await t.chorus.publish(room, { type: 'gift', sender: { id: 'dave', level: 30 }, payload: { value: 520, name: 'castle' } }, publish_token);
      assert(chat.ids.length === 1 && gift.ids.length === 1, `publish answered ids ${JSON.stringify([chat, gift])}`);
      for (const page of [a, b]) {
        const line = msgById(page, chat.ids[0]);
        await line.waitFor({ timeout: 10000 });
        assert((await line.textContent()).includes(text), `chat line shows "${text}"`);
        assert((await line.getAttribute('data-type')) === 'chat', 'chat line has data-type chat');
        await msgById(page, gift.ids[0]).waitFor({ timeout: 10000 });
        // The gift also gets a banner above the screen.
        await page.locator(`${sel('gift-banner')}[data-id="${gift.ids[0]}"]`).waitFor({ state: 'attached', timeout: 5000 });
        // Dedupe: history (polling endpoint) and the WebSocket block carry the same id once.
        assert(await msgById(page, chat.ids[0]).count() === 1, 'the chat message is rendered exactly once');
      }
      // Both viewers are counted online (subscribed / presence / block online).
      await waitForData(a, 'online-count', 'value', '>=', 2, 10000);
      t.log(`message ${chat.ids[0]} rendered in both contexts`);
    },
  },

  {
    name: 'a like in one context changes the total in the other',
    timeoutMs: 40000,
    async run(t) {
      const room = `t2-${suffix()}`;
      const a = await t.openRoom('alice', room, 'alice-t2');
      const b = await t.openRoom('bob', room, 'bob-t2');
      const likeButton = a.locator(sel('like-button'));
      await a.locator(`${sel('like-button')}:not([disabled])`).waitFor();
      assert((await b.getAttribute(sel('like-count'), 'data-value')) === '0', 'a new room starts with 0 likes');
      await likeButton.click();
      await a.locator(`${sel('like-button')}[aria-pressed="true"]`).waitFor({ timeout: 5000 });
      // Bob sees it through the room's `likes` gain message (no reload, no polling of likes).
      await waitForData(b, 'like-count', 'value', '==', 1, 10000);
      await waitForData(a, 'like-count', 'value', '==', 1, 10000);
      // And the way back: the newer, smaller total wins under the gain rule.
      await a.locator(`${sel('like-button')}:not([disabled])`).waitFor();
      await likeButton.click();
      await a.locator(`${sel('like-button')}[aria-pressed="false"]`).waitFor({ timeout: 5000 });
      await waitForData(b, 'like-count', 'value', '==', 0, 10000);
      // A page opened now starts from GET /v1/likes/counts.
      await likeButton.click();
      await waitForData(b, 'like-count', 'value', '==', 1, 10000);
      const c = await t.openRoom('carol', room, 'carol-t2');
      await waitForData(c, 'like-count', 'value', '==', 1, 10000);
    },
  },

  {
    name: 'a crowd burst: blocks of at most 20, drops counted, PK bar moves',
    timeoutMs: 60000,
    async run(t) {
      const room = 'lobby';
      const page = await t.openRoom('viewer', room, 'viewer-t3');
      // A PK against music; the crowd sends part of its gifts to the opponent.
      await page.fill(sel('pk-opponent'), 'music');
      await page.fill(sel('pk-seconds'), '120');
      await page.click(sel('pk-start'));
      await page.locator(`${sel('pk-bar')}[data-state="running"]`).waitFor({ timeout: 10000 });
      await page.selectOption(sel('crowd-rate'), '500');
      await page.selectOption(sel('crowd-seconds'), '10');
      await page.click(sel('crowd-button'));
      await waitForData(page, 'crowd-sent', 'value', '>', 0, 10000);
      // Overload is visible: full blocks and a growing drop counter.
      await waitForData(page, 'block-panel', 'dropped', '>', 0, 15000);
      await waitForData(page, 'block-panel', 'blocks', '>=', 4, 15000);
      await waitForData(page, 'block-panel', 'maxSize', '==', 20, 5000);
      await page.locator(sel('gift-banner')).first().waitFor({ state: 'attached', timeout: 10000 });
      await waitForData(page, 'pk-bar', 'scoreSelf', '>', 0, 15000);
      await waitForData(page, 'pk-bar', 'scoreOther', '>', 0, 15000);
      const panel = await dataOf(page, 'block-panel');
      const rows = await page.$$eval(`${sel('block-row')}`, (rs) => rs.map((r) => ({ ...r.dataset })));
      const sent = Number(await page.getAttribute(sel('crowd-sent'), 'data-value'));
      t.log(`panel ${JSON.stringify(panel)}; crowd sent ${sent}; ${rows.length} rows`);
      assert(Number(panel.maxSize) <= 20, `no block above block_max 20 (max ${panel.maxSize})`);
      assert(rows.length > 0 && rows.every((r) => Number(r.size) <= 20 && r.source === 'websocket'), `rows ${JSON.stringify(rows)}`);
      assert(Number(panel.dropped) <= sent, `dropped ${panel.dropped} <= published ${sent}`);
      assert(Number(panel.messages) + Number(panel.dropped) <= sent + Number(panel.blocks) * 3,
        `delivered + dropped (${panel.messages} + ${panel.dropped}) do not exceed what was published (${sent}) plus system messages`);
      const shot = path.join(t.artifacts, 'room.png');
      await page.screenshot({ path: shot });
      t.log(`screenshot ${shot}`);
      if (process.env.UPDATE_SCREENSHOT === '1') {
        const doc = path.join(t.repo, 'docs', 'img', 'room.png');
        fs.mkdirSync(path.dirname(doc), { recursive: true });
        fs.copyFileSync(shot, doc);
        t.log(`wrote ${doc}`);
      }
      await page.click(sel('crowd-button'));  // stop
    },
  },

  {
    name: 'a moderated word never shows, the sender sees why; clean chat shows',
    timeoutMs: 40000,
    async run(t) {
      const room = `t4-${suffix()}`;
      const a = await t.openRoom('alice', room, 'alice-t4');
      const b = await t.openRoom('bob', room, 'bob-t4');
      const bad = `this is a scam ${suffix()}`;   // "scam" is in models/moderation/words.txt
      await a.fill(sel('chat-input'), bad);
      await a.click(sel('chat-send'));
      await a.locator(`${sel('chat-feedback')}[data-state="error"]`).waitFor({ timeout: 15000 });
      const code = await a.getAttribute(sel('chat-feedback'), 'data-code');
      assert(code === 'moderation_rejected', `sender sees moderation_rejected (got ${code}: ${await a.textContent(sel('chat-feedback'))})`);
      assert((await a.textContent(sel('chat-feedback'))).includes('scam'), 'the error names the matched term');
      // Sent after the rejection was answered, so it is published after anything the bad one
      // could have become: once it is on both screens, the bad one would be too.
      const clean = `hello everyone ${suffix()}`;
      await a.fill(sel('chat-input'), clean);
      await a.click(sel('chat-send'));
      await a.locator(`${sel('chat-feedback')}[data-state="ok"]`).waitFor({ timeout: 15000 });
      const id = await a.getAttribute(sel('chat-feedback'), 'data-id');
      for (const page of [a, b]) {
        const line = msgByText(page, clean);
        await line.waitFor({ timeout: 10000 });
        assert((await line.getAttribute('data-id')) === id, 'the clean chat has the id chat_ok answered');
        assert((await line.textContent()).includes('alice-t4'), 'the sender is the token user');
        assert(await msgByText(page, 'scam').count() === 0, `"${bad}" is not on ${page.__label}'s screen`);
      }
      // And through the polling endpoint nobody can fetch it either.
      const poll = await t.chorus.ok('GET', `/v1/rooms/${room}/messages?since=0&limit=50`);
      assert(poll.messages.some((m) => m.payload.text === clean), 'the clean chat is pollable');
      assert(!poll.messages.some((m) => String(m.payload.text || '').includes('scam')), 'the rejected chat is not pollable');
    },
  },

  {
    name: 'the ops page lists the node and OCR returns the text of an image',
    timeoutMs: 60000,
    async run(t) {
      const png = path.join(t.artifacts, 'ocr-input.png');
      try {
        execFileSync('convert', ['-size', '800x200', 'xc:white', '-font', 'DejaVu-Sans', '-pointsize', '48',
          '-fill', 'black', '-annotate', '+20+100', 'CHORUS OCR 42', png], { stdio: 'pipe' });
      } catch (e) {
        throw new Error(`ImageMagick convert failed (apt-get install imagemagick fonts-dejavu-core): ${e.stderr || e.message}`);
      }
      const { invoke_token } = await t.chorus.devToken('ops-t5');
      const { nodes } = await t.chorus.ok('GET', '/v1/compute/nodes', { token: invoke_token });
      assert(nodes.length >= 1, 'the API lists a node');
      const page = await t.newPage('ops');
      for (const url of ['/ops.html', '/ops']) {
        await page.goto(`${t.chorus.base}${url}`);
        for (const n of nodes) {
          await page.locator(`${sel('node-row')}[data-node-id="${n.id}"]`).waitFor({ timeout: 10000 });
        }
      }
      const row = page.locator(`${sel('node-row')}[data-node-id="${nodes[0].id}"]`);
      assert((await row.getAttribute('data-state')) === 'online', 'the local node is online');
      assert((await row.textContent()).includes('ocr-detect'), 'the node row lists its replicas');
      await page.waitForFunction(() => {
        const r = document.querySelector('[data-testid="app-row"][data-app="ocr"]');
        return r && Number(r.dataset.routes) > 0;
      }, null, { timeout: 15000 });
      await page.setInputFiles(sel('ocr-file'), png);
      await page.click(sel('ocr-submit'));
      await page.locator(`${sel('ocr-status')}:is([data-state="done"], [data-state="error"])`).waitFor({ timeout: 30000 });
      const status = await page.textContent(sel('ocr-status'));
      assert((await page.getAttribute(sel('ocr-status'), 'data-state')) === 'done', `OCR answered: ${status}`);
      const text = await page.getAttribute(sel('ocr-text'), 'data-text');
      assert(normalise(text) === 'CHORUS OCR 42', `OCR text "${text}" normalises to "CHORUS OCR 42"`);
      const boxes = page.locator(sel('ocr-box'));
      assert(await boxes.count() >= 1, 'a box is drawn over the image');
      const box = await boxes.first().boundingBox();
      const img = await page.locator(sel('ocr-image')).boundingBox();
      assert(box && img && box.width > 10 && box.x >= img.x - 1 && box.x + box.width <= img.x + img.width + 1,
        `the box ${JSON.stringify(box)} lies over the image ${JSON.stringify(img)}`);
      // The share chart has samples and attributes the OCR request to the node.
      await waitForData(page, 'share-chart', 'samples', '>=', 2, 15000);
      await page.screenshot({ path: path.join(t.artifacts, 'ops.png'), fullPage: true });
    },
  },

  {
    name: 'with the WebSocket blocked the page falls back to polling and still works',
    timeoutMs: 45000,
    async run(t) {
      const room = `t6-${suffix()}`;
      const page = await t.openRoom('poller', room, 'poller-t6', { blockWebSocket: true });
      const transport = await dataOf(page, 'transport');
      assert(transport.transport === 'poll', `transport is poll (${JSON.stringify(transport)})`);
      const { publish_token } = await t.chorus.devToken('publisher-t6');
      const text = `over short polling ${suffix()}`;
      const res = await t.chorus.publish(room, { type: 'chat', sender: { id: 'erin', level: 3 }, payload: { text } }, publish_token);
      await msgById(page, res.ids[0]).waitFor({ timeout: 10000 });
      assert(await page.locator(`${sel('block-row')}[data-source="poll"]`).count() > 0, 'poll answers show in the block panel');
      // Chat goes over HTTP (POST /v1/rooms/{room}/chat) without a WebSocket.
      const clean = `polling chat ${suffix()}`;
      await page.fill(sel('chat-input'), clean);
      await page.click(sel('chat-send'));
      await page.locator(`${sel('chat-feedback')}[data-state="ok"]`).waitFor({ timeout: 15000 });
      await msgByText(page, clean).waitFor({ timeout: 10000 });
      assert(await msgById(page, res.ids[0]).count() === 1, 'polled messages are deduped');
    },
  },

  {
    name: 'after a dropped connection the client reconnects, resubscribes and fills the gap',
    timeoutMs: 40000,
    async run(t) {
      const room = `t7-${suffix()}`;
      const sockets = [];
      // A pass-through proxy for the page's WebSockets, so the test can cut one.
      const page = await t.openRoom('viewer', room, 'viewer-t7', {
        routeWebSocket: (ws) => { ws.connectToServer(); sockets.push(ws); },
      });
      const { publish_token } = await t.chorus.devToken('publisher-t7');
      const say = async (text) => (await t.chorus.publish(room, { type: 'chat', sender: { id: 'frank', level: 8 }, payload: { text } }, publish_token)).ids[0];
      const before = await say(`before the cut ${suffix()}`);
      await msgById(page, before).waitFor({ timeout: 10000 });
      assert(sockets.length === 1, `one WebSocket so far (${sockets.length})`);
      await sockets[0].close({ code: 1006, reason: 'cut by the test' });
      // Published while the page has no connection: only the gap fill can bring it.
      const during = await say(`during the cut ${suffix()}`);
      await page.locator(`${sel('transport')}[data-state="open"]`).waitFor({ timeout: 15000 });
      await msgById(page, during).waitFor({ timeout: 10000 });
      assert(sockets.length === 2, `the client reconnected once (${sockets.length} sockets)`);
      // Resubscribed: a message published now comes in a WebSocket block.
      const after = await say(`after the reconnect ${suffix()}`);
      await msgById(page, after).waitFor({ timeout: 10000 });
      for (const id of [before, during, after]) assert(await msgById(page, id).count() === 1, `message ${id} shown once`);
    },
  },

  {
    name: 'chorus-client.js: dedupe, gain rule, backoff, resubscribe, fallback, chat (fake transport)',
    timeoutMs: 30000,
    async run(t) {
      const page = await t.newPage('unit');
      await page.route('**/favicon.ico', (route) => route.fulfill({ status: 204 }));
      await page.goto(`${t.chorus.base}/healthz`);
      const r = await page.evaluate(async () => {
        const lib = await import('/chorus-client.js');
        const out = {};
        const wait = (ms) => new Promise((res) => setTimeout(res, ms));
        const until = async (fn, ms = 3000) => { const end = Date.now() + ms; while (!fn()) { if (Date.now() > end) return false; await wait(5); } return true; };
        // 2^53 + 1 and 2^53 are equal as Numbers; ids must compare as BigInt.
        out.bigint = lib.compareIds('9007199254740993', '9007199254740992');
        out.validRoom = [lib.isValidRoomId('a.b:c-d_9'), lib.isValidRoomId(''), lib.isValidRoomId('x'.repeat(65)), lib.isValidRoomId('a b')];
        out.backoff = [0, 1, 2, 3, 10].map((a) => lib.backoffDelay(a, { initialMs: 100, maxMs: 1000 }, () => 1));
        out.backoffMin = lib.backoffDelay(2, { initialMs: 100, maxMs: 1000 }, () => 0);

        class FakeWS {
          static all = [];
          static mode = 'ok';
          constructor(url) {
            this.url = url; this.sent = []; this.readyState = 0; FakeWS.all.push(this);
            setTimeout(() => {
              if (FakeWS.mode === 'fail') { this.readyState = 3; this.onclose && this.onclose({ code: 1006 }); return; }
              this.readyState = 1; this.onopen && this.onopen({});
            }, 1);
          }
          send(d) { this.sent.push(JSON.parse(d)); }
          close() { if (this.readyState === 3) return; this.readyState = 3; setTimeout(() => this.onclose && this.onclose({ code: 1000 }), 1); }
          frame(f) { this.onmessage && this.onmessage({ data: JSON.stringify(f) }); }
        }
        const polls = [];
        const fakeFetch = async (url) => {
          polls.push(String(url));
          const body = String(url).includes('/v1/connect') ? { transport: 'websocket', urls: ['ws://fake.invalid/v1/ws'] }
            : { messages: [{ id: '500', room: 'r1', type: 'chat', created_at: 50, payload: { text: 'polled' } }], next_since: 50, next_poll_ms: 20 };
          return new Response(JSON.stringify(body), { status: 200 });
        };
        const c = new lib.ChorusClient({ baseUrl: location.origin, token: 'tok', WebSocket: FakeWS, fetch: fakeFetch,
          history: false, backoff: { initialMs: 10, maxMs: 20 }, maxWsFailures: 2, wsRetryMs: 0 });
        const got = [], gains = [], statuses = [];
        c.on('message', (m) => got.push(m.id));
        c.on('gain', (g) => gains.push(g.message.payload.likes));
        c.on('status', (s) => statuses.push(s.state));
        c.subscribe('r1');
        await until(() => FakeWS.all.length === 1 && FakeWS.all[0].readyState === 1);
        const ws = FakeWS.all[0];
        out.url = ws.url;
        ws.frame({ frame: 'welcome', user: 'u', connection: '1', heartbeat_ms: 40 });
        out.firstSent = ws.sent[0];
        const m = (id, created_at, extra = {}) => ({ id, room: 'r1', type: 'chat', created_at, payload: {}, ...extra });
        ws.frame({ frame: 'block', room: 'r1', seq: 1, messages: [m('1', 10), m('2', 10)] });
        ws.frame({ frame: 'block', room: 'r1', seq: 2, messages: [m('2', 10), m('3', 11)] });
        out.delivered = [...got];
        const like = (id, t, n) => m(id, t, { type: 'notify', gain_key: 'likes', payload: { likes: n } });
        ws.frame({ frame: 'block', room: 'r1', seq: 3, messages: [like('9007199254740993', 100, 5)] });
        ws.frame({ frame: 'block', room: 'r1', seq: 4, messages: [like('9007199254740992', 100, 3)] });  // same ms, smaller id: loses
        ws.frame({ frame: 'block', room: 'r1', seq: 5, messages: [like('7', 99, 1)] });                  // older: loses
        ws.frame({ frame: 'block', room: 'r1', seq: 6, messages: [like('8', 101, 7)] });                 // newer: wins
        out.gains = [...gains];
        out.gainNow = c.gain('r1', 'likes').payload.likes;
        c.seedGain('r1', 'likes', { likes: 9 }, 50);  // a stale seed loses
        out.afterStaleSeed = c.gain('r1', 'likes').payload.likes;
        // Heartbeat: a ping right after welcome and then every heartbeat_ms.
        out.pinged = await until(() => ws.sent.filter((f) => f.op === 'ping').length >= 2, 1000);
        // Chat over the socket: chat_ok resolves, an error frame rejects with its code.
        const okChat = c.chat('r1', 'hi');
        out.chatFrame = ws.sent.filter((f) => f.op === 'chat')[0];
        ws.frame({ frame: 'chat_ok', room: 'r1', id: '42' });
        out.chatOk = await okChat;
        const badChat = c.chat('r1', 'scam');
        ws.frame({ frame: 'error', code: 'moderation_rejected', message: 'blocked words "scam"' });
        out.chatErr = await badChat.then(() => 'resolved', (e) => e.code);
        // A dropped connection: reconnect with backoff, subscribe again.
        ws.close();
        await until(() => FakeWS.all.length === 2 && FakeWS.all[1].readyState === 1);
        FakeWS.all[1].frame({ frame: 'welcome', user: 'u', connection: '2', heartbeat_ms: 25000 });
        out.resubscribed = FakeWS.all[1].sent.some((f) => f.op === 'subscribe' && f.room === 'r1');
        out.gapFill = polls.some((u) => u.includes('/v1/rooms/r1/messages?since=101'));
        // Sockets that never get a welcome: after maxWsFailures (2) the client polls.
        FakeWS.mode = 'fail';
        let fellBack = null;
        c.on('fallback', (f) => { fellBack = f.reason; });
        FakeWS.all[1].close();
        out.fellBack = await until(() => fellBack !== null, 3000) && fellBack;
        out.transport = c.transport;
        out.polled = await until(() => got.includes('500'), 3000);
        out.statuses = [...new Set(statuses)];
        c.close();
        return out;
      });
      t.log(JSON.stringify(r));
      assert(r.bigint === 1, 'ids compare as BigInt');
      assert(JSON.stringify(r.validRoom) === '[true,false,false,false]', `room ids ${r.validRoom}`);
      assert(JSON.stringify(r.backoff) === '[100,200,400,800,1000]', `backoff grows and caps: ${r.backoff}`);
      assert(r.backoffMin === 200, `equal jitter keeps at least half: ${r.backoffMin}`);
      assert(r.url.startsWith('ws://fake.invalid/v1/ws?') && r.url.includes('format=json') && r.url.includes('token=tok'), r.url);
      assert(r.firstSent && r.firstSent.op === 'subscribe' && r.firstSent.room === 'r1', `subscribe after welcome: ${JSON.stringify(r.firstSent)}`);
      assert(JSON.stringify(r.delivered) === '["1","2","3"]', `deduped by id: ${r.delivered}`);
      assert(JSON.stringify(r.gains) === '[5,7]', `gain rule (created_at, then id as BigInt): ${r.gains}`);
      assert(r.gainNow === 7 && r.afterStaleSeed === 7, 'a stale seed does not win');
      assert(r.pinged, 'pings every heartbeat_ms');
      assert(r.chatFrame && r.chatFrame.room === 'r1' && r.chatFrame.text === 'hi', 'chat op sent');
      assert(r.chatOk && r.chatOk.id === '42', 'chat_ok resolves with the id');
      assert(r.chatErr === 'moderation_rejected', `error frame rejects the chat: ${r.chatErr}`);
      assert(r.resubscribed, 'subscribes again after a reconnect');
      assert(r.gapFill, 'fills the gap from the newest created_at seen');
      assert(r.fellBack && r.transport === 'poll', `falls back to polling: ${r.fellBack} / ${r.transport}`);
      assert(r.polled, 'polling delivers messages');
    },
  },
];
