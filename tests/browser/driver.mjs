// A line-oriented remote control for headless Chromium, used by tests/test_browser.py.
//
// Reads one JSON command per line on stdin, answers one JSON line on stdout:
//   {"id": 1, "op": "open", "page": "a", "url": "http://127.0.0.1:8080/demo"}
//   -> {"id": 1, "ok": true, "value": null}   or   {"id": 1, "ok": false, "error": "..."}
// Ops: open (a new browser context per page, so pages share no storage), goto, reload,
// click, fill, eval (an expression), wait (until an expression is truthy, bounded),
// route (a canned response for matching requests), logs (the page's console errors and failed requests),
// screenshot (a PNG of the page to a path), quit.
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM): playwright-core never downloads one.
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const DEFAULT_TIMEOUT_MS = 10000;

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  // No --user-data-dir: playwright refuses it here and gives every launch a fresh temporary profile.
});
const pages = new Map();

function getPage(name) {
  const entry = pages.get(name);
  if (!entry) throw new Error(`no page ${name}`);
  return entry;
}

const ops = {
  async open({ page, url }) {
    const context = await browser.newContext();
    const p = await context.newPage();
    const logs = [];
    p.on('console', (m) => { if (m.type() === 'error') logs.push(`console: ${m.text()}`); });
    p.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
    p.setDefaultTimeout(DEFAULT_TIMEOUT_MS);
    pages.set(page, { context, page: p, logs });
    await p.goto(url);
    return null;
  },
  async goto({ page, url }) { await getPage(page).page.goto(url); return null; },
  async reload({ page }) { await getPage(page).page.reload(); return null; },
  async click({ page, selector }) { await getPage(page).page.click(selector); return null; },
  async fill({ page, selector, value }) { await getPage(page).page.fill(selector, value); return null; },
  async eval({ page, expr }) { return await getPage(page).page.evaluate(expr); },
  // Polled from here, not with waitForFunction: that evaluates a string predicate with eval()
  // inside the page, which the pages' Content-Security-Policy (rightly) refuses. Evaluation
  // through the DevTools protocol is not subject to the page's CSP.
  async wait({ page, expr, timeout }) {
    const p = getPage(page).page;
    const deadline = Date.now() + (timeout || DEFAULT_TIMEOUT_MS);
    for (;;) {
      const value = await p.evaluate(expr);
      if (value) return value;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeout || DEFAULT_TIMEOUT_MS} ms waiting for ${expr}`);
      await new Promise((resolve) => setTimeout(resolve, 15));
    }
  },
  // Answer requests matching `pattern` (a glob) with a canned response, `times` times.
  async route({ page, pattern, status, headers, body, times }) {
    await getPage(page).page.route(pattern, (r) => r.fulfill({ status, headers: headers || {}, body: body || '' }),
      { times: times || undefined });
    return null;
  },
  async logs({ page }) { return getPage(page).logs; },
  // A PNG of the page (the whole of it) written to `path`, for a person to look at.
  async screenshot({ page, path }) { await getPage(page).page.screenshot({ path, fullPage: true }); return null; },
  async close({ page }) { await getPage(page).context.close(); pages.delete(page); return null; },
};

async function quit() {
  await browser.close().catch(() => {});
  process.exit(0);
}

const input = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
input.on('line', (line) => {
  queue = queue.then(async () => {
    const command = JSON.parse(line);
    if (command.op === 'quit') return quit();
    let reply;
    try {
      if (!ops[command.op]) throw new Error(`unknown op ${command.op}`);
      const value = await ops[command.op](command);
      reply = { id: command.id, ok: true, value: value === undefined ? null : value };
    } catch (e) {
      reply = { id: command.id, ok: false, error: String(e && e.message || e) };
    }
    process.stdout.write(JSON.stringify(reply) + '\n');
  });
});
input.on('close', () => { queue.then(quit); });
process.stdout.write(JSON.stringify({ id: 0, ok: true, value: 'ready' }) + '\n');
