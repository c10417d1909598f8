// Starts and stops a `chorus up` for the browser tests (loopback ports, temp data dir) and talks
// to its HTTP API from Node.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** A free TCP port on 127.0.0.1 (bound and released; the kernel does not hand it out again at once). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (returned) or `timeoutMs` passes (throws `what`). */
export async function until(what, fn, { timeoutMs = 30000, intervalMs = 250 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await sleep(intervalMs);
  }
}

export class Chorus {
  constructor({ binary, webRoot, logFile }) {
    this.binary = binary;
    this.webRoot = webRoot;
    this.logFile = logFile;
    this.proc = null;
    this.exited = null;   // Promise of {code, signal}
    this.base = '';
    this.dataDir = '';
  }

  async start() {
    const http = await freePort();
    let grpc = await freePort();
    while (grpc === http) grpc = await freePort();
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'chorus-browser-'));
    this.base = `http://127.0.0.1:${http}`;
    const args = ['up', '--http', `127.0.0.1:${http}`, '--grpc', `127.0.0.1:${grpc}`, '--data-dir', this.dataDir,
      '--set', `http.web_root=${this.webRoot}`];
    const log = fs.openSync(this.logFile, 'w');
    fs.writeSync(log, `$ ${this.binary} ${args.join(' ')}\n`);
    this.proc = spawn(this.binary, args, { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })));
    this.proc.on('exit', () => { this.proc = null; });
    await until('GET /readyz to answer ready', async () => {
      if (!this.proc) throw new Error(`chorus exited early; see ${this.logFile}`);
      const r = await fetch(`${this.base}/readyz`);
      return r.ok && (await r.json()).ready === true;
    }, { timeoutMs: 60000 });
  }

  /** SIGTERM, then SIGKILL after `graceMs`. Resolves {code, signal} (or null if not running). */
  async stop(graceMs = 15000) {
    if (!this.proc) return null;
    const proc = this.proc;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => { try { proc.kill('SIGKILL'); } catch { /* gone */ } }, graceMs);
    const result = await this.exited;
    clearTimeout(timer);
    fs.rmSync(this.dataDir, { recursive: true, force: true });
    return result;
  }

  /** Synchronous best effort for process 'exit' handlers. */
  killNow() {
    if (this.proc) { try { this.proc.kill('SIGKILL'); } catch { /* gone */ } }
  }

  async request(method, p, { token, json, body, headers = {} } = {}) {
    const h = { ...headers };
    if (token) h.Authorization = `Bearer ${token}`;
    let payload = body;
    if (json !== undefined) { h['Content-Type'] = 'application/json'; payload = JSON.stringify(json); }
    const res = await fetch(`${this.base}${p}`, { method, headers: h, body: payload });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    return { status: res.status, data, headers: res.headers };
  }

  /** Like request() but throws unless the status is 2xx; returns the body. */
  async ok(method, p, opts) {
    const r = await this.request(method, p, opts);
    if (r.status < 200 || r.status > 299) throw new Error(`${method} ${p} → ${r.status} ${JSON.stringify(r.data)}`);
    return r.data;
  }

  devToken(user, level = 5) {
    return this.ok('POST', '/v1/dev/token', { json: { user, level } });
  }

  /** Waits until every app has a routable replica (the built-in apps are placed after start). */
  async waitForApps(apps, invokeToken, timeoutMs = 90000) {
    for (const app of apps) {
      await until(`app ${app} to have a route`, async () => {
        const r = await this.request('GET', `/v1/apps/${app}/routes`, { token: invokeToken });
        return r.status === 200 && Array.isArray(r.data) && r.data.length > 0;
      }, { timeoutMs });
    }
  }

  publish(room, messages, publishToken) {
    return this.ok('POST', `/v1/rooms/${encodeURIComponent(room)}/messages`, {
      token: publishToken, json: Array.isArray(messages) ? { messages } : messages,
    });
  }
}
