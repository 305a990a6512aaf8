'use strict';
// Shared helpers for the centrifuge-js interop tests: start/stop hubbub
// processes (each test file owns its own), create SDK clients with the `ws`
// WebSocket implementation, and wait for events with bounded timeouts.
//
// Environment:
//   HUBBUB_BIN         server binary (default <repo>/target/release/hubbub)
//   HUBBUB_EXTRA_ARGS  extra flags appended to every server command line
//                      (whitespace-separated)
//   HUBBUB_LOG=1       echo the server's stdout/stderr while the tests run

const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const fs = require('node:fs');
const WebSocket = require('ws');
const { Centrifuge } = require('centrifuge');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const HUBBUB_BIN = path.resolve(REPO_ROOT, process.env.HUBBUB_BIN || 'target/release/hubbub');
const EXTRA_ARGS = (process.env.HUBBUB_EXTRA_ARGS || '').split(/\s+/).filter(Boolean);

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

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms));
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
 * Starts `HUBBUB_BIN --listen 127.0.0.1:PORT --ping-interval 2s --pong-timeout 4s
 * ...args` and resolves once the port accepts TCP connections (at most
 * `timeoutMs`). Rejects (and kills the process) if it exits or does not listen
 * in time.
 */
async function startServer({ port, args = [], timeoutMs = 10000 } = {}) {
  if (!fs.existsSync(HUBBUB_BIN)) {
    throw new Error(`server binary not found: ${HUBBUB_BIN} (set HUBBUB_BIN)`);
  }
  if (port === undefined) {
    port = await freePort();
  }
  const argv = ['--listen', `127.0.0.1:${port}`, '--ping-interval', '2s', '--pong-timeout', '4s',
    ...args, ...EXTRA_ARGS];
  argv.push(...storeArgs(port, argv));
  const child = spawn(HUBBUB_BIN, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { RUST_LOG: 'info', ...process.env },
  });
  const srv = {
    pid: child.pid,
    port,
    argv,
    child,
    log: '',
    exited: null, // {code, signal} once exited
    url: `ws://127.0.0.1:${port}/connection/websocket`,
  };
  const onData = chunk => {
    const s = chunk.toString();
    srv.log += s;
    if (srv.log.length > 200000) srv.log = srv.log.slice(-100000);
    if (process.env.HUBBUB_LOG) process.stderr.write(`[hubbub:${port}] ${s}`);
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  srv.exitPromise = new Promise(resolve => {
    child.once('exit', (code, signal) => {
      srv.exited = { code, signal };
      live.delete(srv);
      resolve(srv.exited);
    });
    child.once('error', err => {
      srv.exited = { code: null, signal: null, error: err };
      live.delete(srv);
      resolve(srv.exited);
    });
  });
  live.add(srv);

  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (srv.exited) {
      throw new Error(`hubbub exited before listening (${JSON.stringify(srv.exited)}): ` +
        `${HUBBUB_BIN} ${argv.join(' ')}\n${srv.log}`);
    }
    if (await canConnect(port)) {
      return srv;
    }
    await sleep(50);
  }
  await stopServer(srv, { signal: 'SIGKILL' });
  throw new Error(`hubbub did not listen on ${port} within ${timeoutMs} ms\n${srv.log}`);
}

/**
 * Sends `signal` (default SIGTERM) to this server's PID and waits for it to
 * exit (at most `timeoutMs`, then SIGKILL). Resolves with {code, signal}.
 */
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
  const forced = await Promise.race([srv.exitPromise, sleep(2000).then(() => null)]);
  return { ...(forced || {}), killedAfterTimeout: true };
}

async function stopAll() {
  await Promise.all([...live].map(srv => stopServer(srv)));
}

/**
 * A `ws` WebSocket that records every frame the SDK sends (in `sentFrames` of
 * the options object) and can hold frames back: options.delayMs delays every
 * send, so the connect command can be made to arrive after --connect-timeout.
 * The SDK itself is unchanged: this only wraps the socket constructor it is given.
 */
function instrumentedWebSocket(opts = {}) {
  opts.sentFrames = opts.sentFrames || [];
  opts.sockets = opts.sockets || [];
  return class InstrumentedWebSocket extends WebSocket {
    constructor(...a) {
      super(...a);
      opts.sockets.push(this);
    }

    send(data, ...rest) {
      opts.sentFrames.push(typeof data === 'string' ? data : Buffer.from(data).toString());
      if (!opts.delayMs) {
        return super.send(data, ...rest);
      }
      setTimeout(() => {
        if (this.readyState === WebSocket.OPEN) super.send(data, ...rest);
      }, opts.delayMs);
      return undefined;
    }
  };
}

const clients = new Set();

/** A Centrifuge client using `ws`, with short reconnect delays and timeouts. */
function newClient(url, options = {}) {
  const c = new Centrifuge(url, {
    websocket: WebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: 4000,
    ...options,
  });
  // An unhandled 'error' event would not throw (the SDK's emitter is
  // EventEmitter-based, so keep one listener to be safe).
  c.on('error', () => {});
  clients.add(c);
  return c;
}

function closeAllClients() {
  for (const c of clients) {
    try {
      c.disconnect();
    } catch (_) {
      // ignore
    }
  }
  clients.clear();
}

/**
 * Resolves with the first `event` emitted by `emitter` for which `filter(ctx)`
 * is true; rejects after `timeoutMs`.
 */
function waitEvent(emitter, event, { timeoutMs = 5000, filter = () => true, what } = {}) {
  return new Promise((resolve, reject) => {
    const handler = ctx => {
      let ok;
      try {
        ok = filter(ctx);
      } catch (e) {
        ok = false;
      }
      if (!ok) return;
      clearTimeout(timer);
      emitter.removeListener(event, handler);
      resolve(ctx);
    };
    const timer = setTimeout(() => {
      emitter.removeListener(event, handler);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}'${what ? ` (${what})` : ''}`));
    }, timeoutMs);
    emitter.on(event, handler);
  });
}

/** Collects every `event` of `emitter` into an array (returned). */
function collect(emitter, event) {
  const out = [];
  emitter.on(event, ctx => out.push(ctx));
  return out;
}

/** Polls `predicate` every 20 ms until true; rejects after `timeoutMs`. */
async function waitUntil(predicate, { timeoutMs = 5000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Bounds a promise: rejects with a message after `timeoutMs`. */
function within(promise, timeoutMs, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${what}`)), timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Connects a new client and resolves once it is connected. */
async function connectedClient(url, options = {}) {
  const c = newClient(url, options);
  const connected = waitEvent(c, 'connected', { what: 'connected' });
  c.connect();
  const ctx = await connected;
  return { client: c, clientId: ctx.client, ctx };
}

/** Creates, subscribes and waits for `subscribed`; resolves {sub, ctx}. */
async function subscribed(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  const p = waitEvent(sub, 'subscribed', { what: `subscribed ${channel}` });
  sub.subscribe();
  const ctx = await p;
  return { sub, ctx };
}

/** A unique channel name in the default namespace. */
let channelSeq = 0;
function channelName(prefix) {
  channelSeq += 1;
  return `${prefix}_${process.pid}_${channelSeq}_${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A raw `ws` connection to the Centrifugo endpoint, for checks the SDK can't
 * make. Records messages (split on \n and parsed) and the close event.
 */
function rawClient(url) {
  const ws = new WebSocket(url);
  const state = { ws, messages: [], frames: [], closed: null };
  state.opened = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  state.closedPromise = new Promise(resolve => {
    ws.once('close', (code, reason) => {
      state.closed = { code, reason: reason.toString() };
      resolve(state.closed);
    });
  });
  ws.on('error', () => {});
  ws.on('message', data => {
    const text = data.toString();
    state.frames.push(text);
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      try {
        state.messages.push(JSON.parse(line));
      } catch (e) {
        state.messages.push({ __unparsed: line });
      }
    }
  });
  state.send = obj => ws.send(Array.isArray(obj) ? obj.map(o => JSON.stringify(o)).join('\n') : JSON.stringify(obj));
  state.waitClose = (timeoutMs = 5000) => within(state.closedPromise, timeoutMs, 'raw socket close');
  state.waitMessage = (pred, timeoutMs = 5000) => within((async () => {
    for (;;) {
      const m = state.messages.find(pred);
      if (m) return m;
      if (state.closed) throw new Error(`socket closed (${JSON.stringify(state.closed)}) before the expected message`);
      await sleep(20);
    }
  })(), timeoutMs, 'raw socket message');
  state.close = () => {
    try {
      ws.terminate();
    } catch (_) {
      // ignore
    }
  };
  return state;
}

module.exports = {
  Centrifuge,
  WebSocket,
  HUBBUB_BIN,
  REPO_ROOT,
  sleep,
  freePort,
  startServer,
  stopServer,
  stopAll,
  instrumentedWebSocket,
  newClient,
  closeAllClients,
  waitEvent,
  collect,
  waitUntil,
  within,
  connectedClient,
  subscribed,
  channelName,
  rawClient,
};
