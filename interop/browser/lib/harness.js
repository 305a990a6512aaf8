'use strict';
// Shared helpers for the browser tests: start/stop hubbub processes (each test
// file owns its own, on free 127.0.0.1 ports, and kills only those), launch
// headless Chromium through playwright-core, open the chat page as a user, and
// talk to the server from node (seed clients, a raw Centrifugo client).
//
// Environment:
//   HUBBUB_BIN          server binary (default <repo>/target/debug/hubbub)
//   CHROMIUM            browser (default /usr/bin/chromium)
//   HUBBUB_LOG=1        echo the servers' output
//   BROWSER_OUT         where screenshots go (default interop/browser/out)
//   BROWSER_WS_LOG=1    print every WebSocket frame the pages send and receive

const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const fs = require('node:fs');
const WebSocket = require('ws');
const { chromium } = require('playwright-core');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const HUBBUB_BIN = path.resolve(REPO_ROOT, process.env.HUBBUB_BIN || 'target/debug/hubbub');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT = path.resolve(REPO_ROOT, process.env.BROWSER_OUT || 'interop/browser/out');
// No configuration file by default: the server's built-in defaults (the
// `typing` namespace included) are what a newcomer runs.
const CONFIG = null;

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// ---- servers ------------------------------------------------------------------

// Each server keeps its history (the SQLite store) in a directory of its
// own under one temporary root, named by its port: a server restarted on
// the same port finds its data again. Removed when this process exits.
const os = require('node:os');
const DATA_ROOT = fs.mkdtempSync(path.join(os.tmpdir(), 'hubbub-interop-'));
process.on('exit', () => {
  try { fs.rmSync(DATA_ROOT, { recursive: true, force: true }); } catch (_) { /* best effort */ }
});
function storeArgs(port, args) {
  if (args.includes('--store') || args.includes('--data-dir')) return [];
  return ['--data-dir', path.join(DATA_ROOT, String(port))];
}

// Every server process this file started and has not yet seen exit.
const live = new Set();

function killAllSync() {
  for (const srv of live) {
    try {
      process.kill(srv.pid, 'SIGKILL');
    } catch (_) {
      // already gone
    }
  }
  live.clear();
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAllSync();
    process.exit(130);
  });
}

/** Resolves with a TCP port on 127.0.0.1 that was free a moment ago. */
function freePort() {
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

function canConnect(port) {
  return new Promise(resolve => {
    const sock = net.connect({ host: '127.0.0.1', port });
    const done = ok => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/**
 * Starts `HUBBUB_BIN --listen 127.0.0.1:PORT [--config FILE] ...args`
 * (no file by default) and resolves once the port accepts TCP connections.
 */
async function startServer({ port, args = [], config = CONFIG, timeoutMs = 10000 } = {}) {
  if (!fs.existsSync(HUBBUB_BIN)) {
    throw new Error(`server binary not found: ${HUBBUB_BIN} (set HUBBUB_BIN)`);
  }
  if (port === undefined) port = await freePort();
  const argv = ['--listen', `127.0.0.1:${port}`, ...(config ? ['--config', config] : []), ...args];
  argv.push(...storeArgs(port, argv));
  const child = spawn(HUBBUB_BIN, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { RUST_LOG: 'info', ...process.env },
  });
  const srv = {
    pid: child.pid,
    port,
    log: '',
    exited: null,
    base: `http://127.0.0.1:${port}`,
  };
  const onData = chunk => {
    const s = chunk.toString();
    srv.log = (srv.log + s).slice(-100000);
    if (process.env.HUBBUB_LOG) process.stderr.write(`[hubbub:${port}] ${s}`);
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  srv.exitPromise = new Promise(resolve => {
    const done = exited => {
      srv.exited = exited;
      live.delete(srv);
      resolve(exited);
    };
    child.once('exit', (code, signal) => done({ code, signal }));
    child.once('error', error => done({ code: null, signal: null, error: String(error) }));
  });
  live.add(srv);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (srv.exited) {
      throw new Error(`hubbub exited before listening (${JSON.stringify(srv.exited)}):\n${srv.log}`);
    }
    if (await canConnect(port)) return srv;
    await sleep(50);
  }
  await stopServer(srv, { signal: 'SIGKILL' });
  throw new Error(`hubbub did not listen on ${port} within ${timeoutMs} ms\n${srv.log}`);
}

/** Signals this server's PID (default SIGTERM) and waits for it to exit (then SIGKILL). */
async function stopServer(srv, { signal = 'SIGTERM', timeoutMs = 5000 } = {}) {
  if (!srv || srv.exited) return srv && srv.exited;
  try {
    process.kill(srv.pid, signal);
  } catch (_) {
    // already gone
  }
  const res = await Promise.race([srv.exitPromise, sleep(timeoutMs).then(() => null)]);
  if (res) return res;
  try {
    process.kill(srv.pid, 'SIGKILL');
  } catch (_) {
    // already gone
  }
  return srv.exitPromise;
}

async function stopAll() {
  await Promise.all([...live].map(srv => stopServer(srv)));
}

// ---- the browser ------------------------------------------------------------------

/** Headless Chromium (as root it needs --no-sandbox). */
function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox'],
    timeout: 20000,
  });
}

/**
 * A fresh browser context (its own storage: another person) with the page
 * open at `srv.base`, signed in as `name` in `room`. `problems` collects page
 * errors and console errors (a CSP violation is one), for the test to check.
 */
async function openChat(browser, srv, { name, room = 'lobby', viewport } = {}) {
  const context = await browser.newContext(viewport ? { viewport } : {});
  if (process.env.BROWSER_WS_LOG) {
    // Debugging aid: every frame the page sends and receives, on stderr.
    await context.addInitScript(who => {
      const Native = window.WebSocket;
      window.WebSocket = class extends Native {
        constructor(...args) {
          super(...args);
          this.addEventListener('message', e => console.log(`[ws ${who}] <- ${e.data}`));
          const send = this.send.bind(this);
          this.send = d => {
            console.log(`[ws ${who}] -> ${d}`);
            send(d);
          };
        }
      };
    }, name || '?');
  }
  const page = await context.newPage();
  page.setDefaultTimeout(10000);
  const problems = [];
  if (process.env.BROWSER_WS_LOG) page.on('console', m => process.stderr.write(`${m.text()}\n`));
  page.on('pageerror', e => problems.push(`pageerror: ${e.message}`));
  page.on('console', m => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  await page.goto(`${srv.base}/`);
  if (name !== undefined) {
    await page.getByLabel('Your name').fill(name);
    await page.getByLabel('Room', { exact: true }).fill(room);
    await page.getByRole('button', { name: 'Join' }).click();
    await waitConnected(page);
    await page.locator('.log:not([hidden])').waitFor({ state: 'attached' });
  }
  return { page, context, problems };
}

async function waitConnected(page, timeout = 10000) {
  await page.locator('#conn[data-state="connected"]').waitFor({ timeout });
}

/** The message box, the send button's form. */
function messageBox(page) {
  return page.getByRole('textbox', { name: 'Message', exact: true });
}

async function say(page, text) {
  const box = messageBox(page);
  await box.fill(text);
  await box.press('Enter');
}

/** The shown room's messages as [{who, text, time}], oldest first. */
function messages(page) {
  return page.locator('.log:not([hidden]) > li.msg').evaluateAll(items => items.map(li => ({
    who: li.querySelector('.who').textContent,
    text: li.querySelector('.text').textContent,
    time: li.querySelector('time') ? li.querySelector('time').textContent : '',
    offset: Number(li.dataset.offset || 0),
  })));
}

/** The names in the online list (without "(you)"). */
function onlineNames(page) {
  return page.locator('#online > li').evaluateAll(items => items.map(li => li.firstChild.textContent));
}

/** Polls `fn` (async) until `check(value)` holds; returns the value or throws the last one. */
async function eventually(fn, check, { timeoutMs = 8000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let value;
  for (;;) {
    value = await fn();
    if (check(value)) return value;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${JSON.stringify(value)}`);
    }
    await sleep(50);
  }
}

function screenshotPath(name) {
  fs.mkdirSync(OUT, { recursive: true });
  return path.join(OUT, name);
}

// ---- node clients --------------------------------------------------------------

/** Records a `ws` socket's text messages (JSON lines parsed) and its close. */
function recorded(ws) {
  const state = { ws, messages: [], closed: null };
  state.opened = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.on('error', () => {});
  ws.on('close', code => {
    state.closed = { code };
  });
  ws.on('message', data => {
    for (const line of data.toString().split('\n')) {
      if (line.trim() === '') continue;
      try {
        state.messages.push(JSON.parse(line));
      } catch (_) {
        state.messages.push({ unparsed: line });
      }
    }
  });
  state.waitFor = (pred, what = 'message', timeoutMs = 8000) =>
    eventually(async () => state.messages.find(pred), Boolean, { timeoutMs, what });
  state.close = () => ws.terminate();
  return state;
}

/** A seed-protocol client in `room` (plain WebSocket, chat lines as text frames). */
async function seedClient(srv, room, username) {
  const url = `ws://127.0.0.1:${srv.port}/ws/${encodeURIComponent(room)}?username=${encodeURIComponent(username)}`;
  const state = recorded(new WebSocket(url));
  await state.opened;
  state.say = text => state.ws.send(text);
  return state;
}

/** A minimal Centrifugo-protocol client from node: connect, then commands by hand. */
async function rawCentrifuge(srv) {
  const state = recorded(new WebSocket(`ws://127.0.0.1:${srv.port}/connection/websocket`));
  await state.opened;
  let nextId = 1;
  // Answer pings so long tests stay connected.
  state.ws.on('message', data => {
    if (data.toString().split('\n').includes('{}')) state.ws.send('{}');
  });
  state.command = async (method, params) => {
    const id = nextId++;
    state.ws.send(JSON.stringify({ id, [method]: params }));
    const reply = await state.waitFor(m => m.id === id, `reply to ${method}`);
    if (reply.error) throw new Error(`${method}: ${JSON.stringify(reply.error)}`);
    return reply[method];
  };
  await state.command('connect', { name: 'node' });
  return state;
}

module.exports = {
  REPO_ROOT,
  sleep,
  freePort,
  startServer,
  stopServer,
  stopAll,
  launchBrowser,
  openChat,
  waitConnected,
  messageBox,
  say,
  messages,
  onlineNames,
  eventually,
  screenshotPath,
  seedClient,
  rawCentrifuge,
};
