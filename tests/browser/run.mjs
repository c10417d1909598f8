#!/usr/bin/env node
// Browser tests of the Chorus pages (docs/web.md, "Browser tests").
//
//   node tests/browser/run.mjs <path to chorus> [artifacts dir]
//
// Starts its own `chorus up` on free loopback ports with a temporary data dir, drives Debian's
// chromium headless through playwright-core (one browser, a few contexts), runs the cases in
// cases.mjs one after another and stops chorus (SIGTERM, SIGKILL after a grace period).
// Screenshots and the chorus log go to the artifacts dir (default tests/browser/artifacts).
// Environment: CASES=1,3 runs a subset (by number or name part); CHROMIUM=/path overrides the
// browser; UPDATE_SCREENSHOT=1 also writes docs/img/room.png; HEADED=1 shows the browser.
// Exit status: 0 all passed, 1 a case failed, 77 skipped (playwright-core or chromium missing).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Chorus } from './lib/chorus.mjs';
import { CASES } from './cases.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const SKIP = 77;
const TOTAL_BUDGET_MS = 5 * 60 * 1000;

const [binaryArg, artifactsArg] = process.argv.slice(2);
if (!binaryArg) {
  console.error('usage: node tests/browser/run.mjs <path to chorus> [artifacts dir]');
  process.exit(2);
}
const binary = path.resolve(binaryArg);
const artifacts = path.resolve(artifactsArg || path.join(here, 'artifacts'));
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error(`browser tests skipped: playwright-core is not installed (run \`npm ci\` in ${here}, ` +
    `or scripts/install-deps.sh): ${e.message}`);
  process.exit(SKIP);
}
if (!fs.existsSync(chromiumPath)) {
  console.error(`browser tests skipped: no chromium at ${chromiumPath} (apt-get install chromium, or set CHROMIUM)`);
  process.exit(SKIP);
}
if (!fs.existsSync(binary)) {
  console.error(`no chorus binary at ${binary}`);
  process.exit(1);
}
fs.mkdirSync(artifacts, { recursive: true });

const chorus = new Chorus({ binary, webRoot: path.join(repo, 'web'), logFile: path.join(artifacts, 'chorus.log') });
let browser = null;
process.on('exit', () => chorus.killNow());
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => { chorus.killNow(); process.exit(1); });
}
const watchdog = setTimeout(() => {
  console.error(`browser tests: over the ${TOTAL_BUDGET_MS / 1000} s budget, giving up`);
  chorus.killNow();
  process.exit(1);
}, TOTAL_BUDGET_MS);
watchdog.unref();

const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s]`, ...a);
const t0 = Date.now();

/** What a case gets: the server, the browser, tokens, helpers; tracks pages for cleanup. */
class TestContext {
  constructor(name) {
    this.name = name;
    this.chorus = chorus;
    this.browser = browser;
    this.repo = repo;
    this.artifacts = artifacts;
    this.contexts = [];
    this.pages = [];
    this.pageErrors = [];
    this.log = (...a) => log(`  ${name}:`, ...a);
  }

  /** A new browser context and page, with page errors and console errors recorded. */
  async newPage(label, { blockWebSocket = false, routeWebSocket = null } = {}) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    this.contexts.push(context);
    if (blockWebSocket) {
      // The server is never reached: every WebSocket the page opens is closed at once.
      await context.routeWebSocket(/\/v1\/ws/, (ws) => ws.close({ code: 1011, reason: 'blocked by the test' }));
    } else if (routeWebSocket) {
      await context.routeWebSocket(/\/v1\/ws/, routeWebSocket);
    }
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    page.__label = label;
    this.pages.push(page);
    page.on('pageerror', (e) => this.pageErrors.push(`${label}: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') this.log(`[${label} console.${m.type()}] ${m.text()}`);
    });
    return page;
  }

  /** Opens the live room page for `user` in `room` and waits for the transport to be up. */
  async openRoom(label, room, user, { blockWebSocket = false, routeWebSocket = null } = {}) {
    const page = await this.newPage(label, { blockWebSocket, routeWebSocket });
    await page.goto(`${chorus.base}/?room=${encodeURIComponent(room)}&user=${encodeURIComponent(user)}`);
    const state = blockWebSocket ? 'polling' : 'open';
    await page.locator(`[data-testid="transport"][data-state="${state}"]`).waitFor({ timeout: 20000 });
    await page.locator(`[data-testid="room-name"]`, { hasText: room }).waitFor();
    return page;
  }

  async cleanup(failed) {
    if (failed) {
      for (const [i, page] of this.pages.entries()) {
        const file = path.join(artifacts, `failed-${this.name.replace(/[^a-z0-9]+/gi, '-')}-${i}-${page.__label}.png`);
        try { await page.screenshot({ path: file, fullPage: true, timeout: 5000 }); log(`  screenshot: ${file}`); } catch { /* page gone */ }
      }
    }
    for (const c of this.contexts) { try { await c.close(); } catch { /* already closed */ } }
  }
}

function selected(c, i) {
  const want = (process.env.CASES || '').split(',').map((s) => s.trim()).filter(Boolean);
  if (!want.length) return true;
  return want.some((w) => String(i + 1) === w || c.name.toLowerCase().includes(w.toLowerCase()));
}

let failures = 0;
const results = [];
try {
  log(`starting chorus (${binary})`);
  await chorus.start();
  log(`chorus ready at ${chorus.base}; waiting for the built-in apps`);
  const ops = await chorus.devToken('browser-test-ops');
  await chorus.waitForApps(['moderation', 'ocr', 'ocr-detect', 'ocr-recognize'], ops.invoke_token);
  log('built-in apps routable; launching chromium');
  browser = await chromium.launch({ executablePath: chromiumPath, headless: !process.env.HEADED });
  log(`chromium ${browser.version()}`);

  for (const [i, c] of CASES.entries()) {
    if (!selected(c, i)) continue;
    const name = `${i + 1}. ${c.name}`;
    const t = new TestContext(name);
    const started = Date.now();
    log(`RUN  ${name}`);
    let error = null;
    let timer;
    try {
      await Promise.race([
        c.run(t),
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`case timed out after ${c.timeoutMs / 1000} s`)), c.timeoutMs); }),
      ]);
      if (t.pageErrors.length) throw new Error(`uncaught errors in the page:\n    ${t.pageErrors.join('\n    ')}`);
      if (!chorus.proc) throw new Error('chorus exited during the case');
    } catch (e) {
      error = e;
    } finally {
      clearTimeout(timer);
    }
    await t.cleanup(!!error);
    const ms = Date.now() - started;
    if (error) {
      failures++;
      log(`FAIL ${name} (${ms} ms)\n    ${String(error.stack || error).split('\n').join('\n    ')}`);
    } else {
      log(`ok   ${name} (${ms} ms)`);
    }
    results.push({ name, ok: !error, ms });
  }
} catch (e) {
  failures++;
  log(`setup failed: ${e.stack || e}`);
} finally {
  if (browser) await browser.close().catch(() => {});
  const exit = await chorus.stop();
  if (exit) {
    log(`chorus stopped (${exit.signal ? `signal ${exit.signal}` : `exit ${exit.code}`})`);
    if (exit.code !== 0 && exit.signal !== 'SIGTERM') {
      failures++;
      log(`FAIL chorus did not exit cleanly on SIGTERM; see ${chorus.logFile}`);
    }
  }
}

const passed = results.filter((r) => r.ok).length;
log(`${passed}/${results.length} cases passed; artifacts in ${artifacts}`);
process.exit(failures ? 1 : 0);
