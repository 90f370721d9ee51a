// A headless Debian chromium driven by playwright-core, one JSON command per stdin line, one JSON
// answer per stdout line (`{"ok":true,"value":...}` or `{"ok":false,"error":"..."}`).
// Used by e2e/src/harness/browser.rs; started as
//   node browser.cjs --playwright <dir of playwright-core> [--chromium /usr/bin/chromium]
// Commands (field `cmd`):
//   goto {url}                        -> {status, url, headers}
//   fill {selector, value}            click {selector}
//   wait_for {selector | text, timeout_ms?}
//   text {selector?}  (default body)  -> innerText
//   html                              -> page HTML
//   url                               -> current URL
//   cookies                           -> the context's cookies (name, value, httpOnly, secure, sameSite, ...)
//   screenshot {path, full_page?}     -> path
//   eval {expr}                       -> JSON value of the expression (awaited when a promise)
//   new_context                       -> fresh cookies and storage (a different user)
//   close
// Nothing is downloaded: chromium is the system's, playwright-core has no browsers of its own.
'use strict';

const readline = require('node:readline');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const pwDir = arg('--playwright');
const chromiumPath = arg('--chromium', '/usr/bin/chromium');
const defaultTimeout = Number(arg('--timeout-ms', '15000'));
if (!pwDir) {
  process.stdout.write(JSON.stringify({ ok: false, error: '--playwright is required' }) + '\n');
  process.exit(2);
}
const { chromium } = require(pwDir);

let browser;
let context;
let page;

async function freshContext() {
  if (context) await context.close();
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(defaultTimeout);
  page = await context.newPage();
}

function need(cmd, field) {
  if (typeof cmd[field] !== 'string') throw new Error(`${cmd.cmd}: field ${field} (string) is required`);
  return cmd[field];
}

const handlers = {
  async goto(cmd) {
    const resp = await page.goto(need(cmd, 'url'), { waitUntil: 'load' });
    return resp
      ? { status: resp.status(), url: page.url(), headers: await resp.allHeaders() }
      : { status: null, url: page.url(), headers: {} };
  },
  async fill(cmd) {
    await page.fill(need(cmd, 'selector'), String(cmd.value ?? ''));
    return null;
  },
  async click(cmd) {
    await page.click(need(cmd, 'selector'));
    return null;
  },
  async wait_for(cmd) {
    const timeout = cmd.timeout_ms ?? defaultTimeout;
    if (typeof cmd.selector === 'string') {
      await page.waitForSelector(cmd.selector, { timeout });
    } else if (typeof cmd.text === 'string') {
      await page.getByText(cmd.text, { exact: false }).first().waitFor({ timeout });
    } else {
      throw new Error('wait_for: selector or text is required');
    }
    return null;
  },
  async text(cmd) {
    return page.innerText(typeof cmd.selector === 'string' ? cmd.selector : 'body');
  },
  async html() {
    return page.content();
  },
  async url() {
    return page.url();
  },
  async cookies() {
    return context.cookies();
  },
  async screenshot(cmd) {
    const path = need(cmd, 'path');
    await page.screenshot({ path, fullPage: cmd.full_page !== false });
    return path;
  },
  async eval(cmd) {
    const value = await page.evaluate(need(cmd, 'expr'));
    return value === undefined ? null : value;
  },
  async new_context() {
    await freshContext();
    return null;
  },
};

async function main() {
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
  await freshContext();
  process.stdout.write(JSON.stringify({ ok: true, value: 'ready' }) + '\n');
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let answer;
    try {
      const cmd = JSON.parse(line);
      if (cmd.cmd === 'close') break;
      const handler = handlers[cmd.cmd];
      if (!handler) throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
      answer = { ok: true, value: await handler(cmd) };
    } catch (e) {
      answer = { ok: false, error: String(e && e.message ? e.message : e) };
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
  }
  await browser.close();
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: `browser: ${e && e.stack ? e.stack : e}` }) + '\n');
  if (browser) browser.close().catch(() => {});
  process.exit(1);
});
