// The compute ops page (web/ops.html, also served at /ops): nodes, routing weights, per-node
// share of requests, and an OCR upload. Reads GET /v1/compute/nodes and GET /v1/apps/{app}/routes
// with the dev login's invoke token; everything refreshes every REFRESH_MS.
import { api, devLogin, readJson } from '/chorus-client.js';

const REFRESH_MS = 2000;
const SAMPLES = 60;
const BUILTIN_APPS = ['ocr', 'ocr-detect', 'ocr-recognize', 'moderation'];
const COLORS = ['#5b4bdb', '#e0406b', '#1c8a4a', '#c77700', '#3b8ed9', '#8e44ad', '#16a085', '#7f8c8d'];

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'style') e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
};

let login = null;
let lastTotals = null;          // node -> requests (summed over apps) at the previous refresh
let lastAt = 0;
const samples = [];             // [{at, perNode: Map, total, rate}]
const colorOf = new Map();

async function boot() {
  try {
    login = await devLogin();
  } catch (e) {
    const b = $('login-error');
    b.hidden = false;
    b.textContent = `Dev login failed (${e.code}: ${e.message}). This page reads the compute API with a ` +
      'compute.invoke token from POST /v1/dev/token, offered only on a loopback http.listen.';
    return;
  }
  wireOcr();
  wireLoad();
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

// ------------------------------------------------------------------ nodes, apps, weights

async function refresh() {
  let nodes;
  try {
    nodes = (await api('GET', '/v1/compute/nodes', { token: login.invoke_token })).nodes || [];
  } catch (e) {
    $('nodes-updated').textContent = `— ${e.message}`;
    return;
  }
  const apps = new Set(BUILTIN_APPS);
  for (const n of nodes) for (const r of n.replicas || []) apps.add(r.app);
  const routes = new Map();     // app -> [{node, address, weight, requests}]
  await Promise.all([...apps].map(async (app) => {
    try {
      routes.set(app, await api('GET', `/v1/apps/${encodeURIComponent(app)}/routes`, { token: login.invoke_token }));
    } catch (e) {
      if (e.status !== 404) routes.set(app, []);
    }
  }));
  renderNodes(nodes, routes);
  renderApps(nodes, routes);
  sample(nodes, routes);
  renderChart();
  $('nodes-updated').textContent = `— ${nodes.length} node${nodes.length === 1 ? '' : 's'}, updated ${new Date().toLocaleTimeString('en-GB')}`;
}

function colorFor(node) {
  if (!colorOf.has(node)) colorOf.set(node, COLORS[colorOf.size % COLORS.length]);
  return colorOf.get(node);
}

function renderNodes(nodes, routes) {
  const body = $('node-rows');
  body.textContent = '';
  if (!nodes.length) {
    body.append(el('tr', {}, el('td', { colspan: 9, class: 'muted' }, 'no nodes in the view')));
    return;
  }
  const stateClass = { online: 'ok', draining: 'warn', offline: 'bad' };
  for (const n of nodes) {
    const util = Math.max(0, Math.min(1, Number(n.cpu_utilization) || 0));
    const cards = (n.cards || []).map((c) => `${c.type}×${c.count}`).join(', ') || 'CPU only';
    const cap = n.capacity || {}, alloc = n.allocated || {};
    const replicas = el('div');
    for (const r of n.replicas || []) replicas.append(el('span', { class: `chip ${r.state}`, title: r.id || '' }, `${r.app}: ${r.state}`));
    const weights = el('div');
    for (const [app, list] of [...routes].sort()) {
      const mine = list.find((r) => r.node === n.id);
      if (!mine) continue;
      const total = list.reduce((s, r) => s + (Number(r.weight) || 0), 0);
      const share = total > 0 ? (Number(mine.weight) / total) * 100 : 0;
      weights.append(el('span', { class: 'chip', title: `weight ${mine.weight}` }, `${app} ${share.toFixed(0)}%`));
    }
    const bar = el('div', { class: 'util' + (util > 0.8 ? ' hot' : '') }, el('div', { style: `width:${(util * 100).toFixed(0)}%` }));
    body.append(el('tr', { dataset: { testid: 'node-row', nodeId: n.id, state: n.state } },
      el('td', {}, el('b', {}, n.id), el('div', { class: 'small muted' }, n.address || '')),
      el('td', {}, el('span', { class: `pill ${stateClass[n.state] || ''}`, dataset: { testid: 'node-state' } }, n.state)),
      el('td', {}, `${n.pool || '—'} / ${n.cluster || '—'}`),
      el('td', {}, cards),
      el('td', {}, bar, ` ${(util * 100).toFixed(0)}%`),
      el('td', {}, String(n.in_flight ?? 0)),
      el('td', { class: 'small' }, `${alloc.cpu_millis ?? 0}/${cap.cpu_millis ?? 0} mCPU`, el('br'),
        `${alloc.memory_mb ?? 0}/${cap.memory_mb ?? 0} MB`),
      el('td', {}, replicas),
      el('td', {}, weights.childElementCount ? weights : el('span', { class: 'muted' }, 'not routable')),
    ));
  }
}

function renderApps(nodes, routes) {
  const body = $('app-rows');
  body.textContent = '';
  for (const [app, list] of [...routes].sort()) {
    let running = 0, total = 0;
    for (const n of nodes) for (const r of n.replicas || []) if (r.app === app) { total++; if (r.state === 'running') running++; }
    const requests = list.reduce((s, r) => s + (Number(r.requests) || 0), 0);
    body.append(el('tr', { dataset: { testid: 'app-row', app, routes: String(list.length), running: String(running) } },
      el('td', {}, el('b', {}, app)), el('td', {}, `${running} / ${total}`), el('td', {}, String(list.length)),
      el('td', {}, requests.toLocaleString('en-US'))));
  }
}

// ------------------------------------------------------------------ share chart

function sample(nodes, routes) {
  const totals = new Map();
  for (const list of routes.values()) {
    for (const r of list) totals.set(r.node, (totals.get(r.node) || 0) + (Number(r.requests) || 0));
  }
  const now = Date.now();
  if (lastTotals) {
    const perNode = new Map();
    let total = 0;
    for (const [node, n] of totals) {
      const d = Math.max(0, n - (lastTotals.get(node) || 0));
      if (d > 0) { perNode.set(node, d); total += d; }
    }
    samples.push({ at: now, perNode, total, rate: total / Math.max(0.001, (now - lastAt) / 1000) });
    while (samples.length > SAMPLES) samples.shift();
  }
  lastTotals = totals;
  lastAt = now;
  for (const n of nodes) colorFor(n.id);
}

function renderChart() {
  const svgNS = 'http://www.w3.org/2000/svg';
  const svg = $('share-chart').querySelector('svg');
  svg.textContent = '';
  const W = 600, H = 220, colW = W / SAMPLES;
  const mk = (tag, attrs) => {
    const e = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  svg.append(mk('rect', { x: 0, y: 0, width: W, height: H, fill: '#f7f8fb' }));
  for (const f of [0.25, 0.5, 0.75]) svg.append(mk('line', { x1: 0, x2: W, y1: H * f, y2: H * f, stroke: '#e2e5ec', 'stroke-width': 1 }));
  const offset = SAMPLES - samples.length;
  const maxRate = Math.max(1, ...samples.map((s) => s.rate));
  const points = [];
  samples.forEach((s, i) => {
    const x = (offset + i) * colW;
    let y = H;
    if (s.total > 0) {
      for (const [node, d] of [...s.perNode].sort()) {
        const h = (d / s.total) * H;
        y -= h;
        const r = mk('rect', { x: x + 0.5, y, width: colW - 1, height: h, fill: colorFor(node) });
        r.append(mk('title', {}));
        r.firstChild.textContent = `${node}: ${((d / s.total) * 100).toFixed(0)}% of ${s.total} requests`;
        svg.append(r);
      }
    }
    points.push(`${x + colW / 2},${H - (s.rate / maxRate) * (H - 10)}`);
  });
  if (points.length > 1) {
    svg.append(mk('polyline', { points: points.join(' '), fill: 'none', stroke: '#1d2230', 'stroke-width': 2, 'stroke-linejoin': 'round', opacity: 0.75 }));
  }
  const last = samples[samples.length - 1];
  const chart = $('share-chart');
  chart.dataset.samples = String(samples.length);
  chart.dataset.lastShares = last ? JSON.stringify(Object.fromEntries([...last.perNode].map(([n, d]) => [n, d / last.total]))) : '{}';
  $('rate').textContent = last ? `— ${last.rate.toFixed(1)} req/s now, peak ${maxRate.toFixed(1)}` : '';
  const legend = $('share-legend');
  legend.textContent = '';
  for (const [node, color] of colorOf) legend.append(el('span', {}, el('i', { style: `background:${color}` }), node));
}

// ------------------------------------------------------------------ load generator

const SAMPLE_TEXTS = ['hello everyone', 'what a great stream', 'free money here', 'see you tomorrow', 'gg well played',
  'click here to win', 'nice song', 'this is a scam', 'good night'];

function wireLoad() {
  const btn = $('load-button');
  btn.addEventListener('click', () => {
    btn.disabled = true;
    const endAt = Date.now() + 15000;
    let sent = 0, blocked = 0, failed = 0, inFlight = 0;
    const out = $('load-sent');
    const timer = setInterval(() => {
      if (Date.now() >= endAt) {
        clearInterval(timer);
        btn.disabled = false;
        return;
      }
      for (let i = 0; i < 2 && inFlight < 8; i++) {
        inFlight++;
        const text = SAMPLE_TEXTS[Math.floor(Math.random() * SAMPLE_TEXTS.length)];
        api('POST', '/v1/apps/moderation/invoke', { token: login.invoke_token, body: text })
          .then((r) => { sent++; if (r && r.verdict === 'block') blocked++; })
          .catch(() => { failed++; })
          .finally(() => {
            inFlight--;
            out.textContent = `${sent} answered (${blocked} blocked)${failed ? `, ${failed} failed` : ''}`;
          });
      }
    }, 100);
  });
}

// ------------------------------------------------------------------ OCR

function setOcrStatus(state, text) {
  const s = $('ocr-status');
  s.dataset.state = state;
  s.textContent = text;
  s.className = 'small ' + (state === 'error' ? 'error' : 'muted');
}

async function recognize(blob) {
  const view = $('ocr-view');
  const img = $('ocr-image');
  view.querySelectorAll('.ocr-box').forEach((b) => b.remove());
  $('ocr-text').textContent = '';
  $('ocr-lines').textContent = '';
  if (img.src.startsWith('blob:')) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  view.hidden = false;
  setOcrStatus('running', 'recognizing…');
  const started = performance.now();
  let result, node = '';
  try {
    const res = await fetch('/v1/apps/ocr/invoke', {
      method: 'POST',
      headers: { Authorization: `Bearer ${login.invoke_token}`, 'Content-Type': blob.type || 'application/octet-stream' },
      body: blob,
    });
    node = res.headers.get('X-Chorus-Node') || '';
    result = await readJson(res, 'ocr');
  } catch (e) {
    const hint = e.status === 503 ? ' (the OCR apps may still be starting; try again in a few seconds)' : '';
    setOcrStatus('error', `${e.code}: ${e.message}${hint}`);
    $('ocr-status').dataset.code = e.code || '';
    return;
  }
  const ms = Math.round(performance.now() - started);
  const text = String(result.text ?? '').trim();
  $('ocr-text').textContent = text || '(no text found)';
  $('ocr-text').dataset.text = text;
  const lines = Array.isArray(result.lines) ? result.lines : [];
  setOcrStatus('done', `${lines.length} line${lines.length === 1 ? '' : 's'} in ${ms} ms${node ? ` on ${node}` : ''}`);
  // Boxes are in image pixels; place them in percent so they follow the displayed size.
  const W = Number(result.width) || img.naturalWidth || 1, H = Number(result.height) || img.naturalHeight || 1;
  const table = $('ocr-lines');
  if (lines.length) table.append(el('tr', {}, el('th', {}, 'text'), el('th', {}, 'box (x, y, w, h)'), el('th', {}, 'confidence')));
  for (const l of lines) {
    const box = el('div', {
      class: 'ocr-box',
      dataset: { testid: 'ocr-box' },
      style: `left:${(l.x / W) * 100}%;top:${(l.y / H) * 100}%;width:${(l.w / W) * 100}%;height:${(l.h / H) * 100}%`,
    }, el('span', {}, l.text ?? ''));
    view.append(box);
    table.append(el('tr', {}, el('td', {}, l.text ?? ''), el('td', {}, `${l.x}, ${l.y}, ${l.w}, ${l.h}`),
      el('td', {}, String(l.confidence ?? ''))));
  }
}

function sampleImage() {
  const c = document.createElement('canvas');
  c.width = 800;
  c.height = 220;
  const g = c.getContext('2d');
  g.fillStyle = '#fff';
  g.fillRect(0, 0, c.width, c.height);
  g.fillStyle = '#000';
  g.font = '48px "DejaVu Sans", sans-serif';
  g.fillText('Hello from Chorus', 30, 90);
  g.font = '36px "DejaVu Sans", sans-serif';
  g.fillText('live rooms, likes and compute', 30, 170);
  return new Promise((resolve) => c.toBlob(resolve, 'image/png'));
}

function wireOcr() {
  document.getElementById('ocr-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const file = $('ocr-file').files[0];
    if (!file) { setOcrStatus('error', 'choose an image first'); return; }
    recognize(file);
  });
  $('ocr-sample').addEventListener('click', async () => recognize(await sampleImage()));
}

boot();
