'use strict';
// Close and error codes as centrifuge-js reports them, plus raw-socket checks
// for what the SDK cannot produce (a command before connect, a duplicate
// subscribe, ping/pong). One server for this file, with a short connect
// timeout and a small command size limit.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const MAX_COMMAND_BYTES = 8192;
let server;

before(async () => {
  server = await h.startServer({
    args: ['--connect-timeout', '1s', '--max-command-bytes', String(MAX_COMMAND_BYTES)],
  });
});

afterEach(() => {
  h.closeAllClients();
});

after(async () => {
  h.closeAllClients();
  await h.stopAll();
});

test('3502 stale (SDK): connect command held back past --connect-timeout', { timeout: 15000 }, async () => {
  // The SDK has no hook that runs between the socket opening and the connect
  // command (getToken/getData run before the socket is created), so the socket
  // constructor handed to the SDK holds every outgoing frame back for 2.5 s.
  const rec = { delayMs: 2500 };
  const c = h.newClient(server.url, { websocket: h.instrumentedWebSocket(rec), timeout: 8000 });
  const disconnected = h.waitEvent(c, 'disconnected', { timeoutMs: 6000 });
  const t0 = Date.now();
  c.connect();
  const ctx = await disconnected;
  const elapsed = Date.now() - t0;
  assert.equal(ctx.code, 3502);
  assert.equal(ctx.reason, 'stale');
  assert.equal(c.state, 'disconnected');
  assert.ok(elapsed >= 700 && elapsed < 2500, `closed after about 1 s, took ${elapsed} ms`);
  await h.sleep(800);
  assert.equal(c.state, 'disconnected', 'terminal: no reconnect');
});

test('3502 stale (raw ws): no connect command within --connect-timeout', { timeout: 10000 }, async () => {
  const raw = h.rawClient(server.url);
  await h.within(raw.opened, 3000, 'raw open');
  const t0 = Date.now();
  const closed = await raw.waitClose(4000);
  const elapsed = Date.now() - t0;
  assert.equal(closed.code, 3502);
  assert.equal(closed.reason, 'stale');
  assert.ok(elapsed >= 700 && elapsed < 3000, `closed after about 1 s, took ${elapsed} ms`);
});

test('3501 (raw ws): a command before connect', { timeout: 10000 }, async () => {
  const raw = h.rawClient(server.url);
  await h.within(raw.opened, 3000, 'raw open');
  raw.send({ id: 1, subscribe: { channel: 'early' } });
  const closed = await raw.waitClose(3000);
  assert.equal(closed.code, 3501);
  assert.equal(closed.reason, 'bad request');
  assert.ok(!raw.messages.some(m => m.id === 1 && m.subscribe), 'no subscribe reply before connect');
});

test('3501 (raw ws): a second connect', { timeout: 10000 }, async () => {
  const raw = h.rawClient(server.url);
  await h.within(raw.opened, 3000, 'raw open');
  raw.send({ id: 1, connect: { name: 'raw' } });
  await raw.waitMessage(m => m.id === 1);
  raw.send({ id: 2, connect: { name: 'raw' } });
  const closed = await raw.waitClose(3000);
  assert.equal(closed.code, 3501);
});

test('raw ws: connect reply fields, 105 on duplicate subscribe, own join, result keys present', { timeout: 10000 }, async () => {
  const raw = h.rawClient(server.url);
  await h.within(raw.opened, 3000, 'raw open');
  const ch = h.channelName('raw');
  // connect + subscribe in one frame, as the JS SDK sends them.
  raw.send([{ connect: { name: 'raw' }, id: 1 }, { subscribe: { channel: ch, join_leave: true, flag: 1 }, id: 2 }]);
  const conn = await raw.waitMessage(m => m.id === 1);
  assert.ok(conn.connect, `connect result: ${JSON.stringify(conn)}`);
  assert.match(conn.connect.client, /^[0-9a-f-]{36}$/i);
  assert.equal(typeof conn.connect.version, 'string');
  assert.equal(conn.connect.ping, 2, 'ping interval in seconds (--ping-interval 2s)');
  assert.equal(conn.connect.pong, true);
  assert.ok(!('expires' in conn.connect) || conn.connect.expires === false);
  const sub = await raw.waitMessage(m => m.id === 2);
  assert.ok(sub.subscribe && typeof sub.subscribe === 'object', `subscribe result present: ${JSON.stringify(sub)}`);
  const join = await raw.waitMessage(m => m.push && m.push.join);
  assert.equal(join.push.channel, ch);
  assert.equal(join.push.join.info.client, conn.connect.client);
  // Replies and pushes: the subscribe reply comes before the join push.
  const iSub = raw.messages.indexOf(sub);
  const iJoin = raw.messages.indexOf(join);
  assert.ok(iSub < iJoin, 'subscribe reply before the join push');

  raw.send({ id: 3, subscribe: { channel: ch } });
  const dup = await raw.waitMessage(m => m.id === 3);
  assert.equal(dup.error && dup.error.code, 105, `duplicate subscribe: ${JSON.stringify(dup)}`);
  assert.equal(typeof dup.error.message, 'string');

  raw.send({ id: 4, publish: { channel: ch, data: { a: 1 } } });
  const pubReply = await raw.waitMessage(m => m.id === 4);
  assert.deepEqual(pubReply, { id: 4, publish: {} });
  const pub = await raw.waitMessage(m => m.push && m.push.pub);
  assert.deepEqual(pub.push.pub.data, { a: 1 });
  assert.equal(pub.push.pub.offset, 1, 'offset is a JSON number');
  assert.equal(pub.push.pub.info.client, conn.connect.client, 'info.client is the publisher');

  raw.send({ id: 5, unsubscribe: { channel: ch } });
  assert.deepEqual(await raw.waitMessage(m => m.id === 5), { id: 5, unsubscribe: {} });
  raw.send({ id: 6, unsubscribe: { channel: ch } });
  assert.deepEqual(await raw.waitMessage(m => m.id === 6), { id: 6, unsubscribe: {} },
    'unsubscribe when not subscribed is {}');
  for (const f of raw.frames) {
    assert.ok(!/\n\n/.test(f) && !f.startsWith('\n'), `no empty lines in frames: ${JSON.stringify(f)}`);
  }
  raw.close();
});

test('raw ws: server pings {} and closes with 3012 when not answered', { timeout: 15000 }, async () => {
  const raw = h.rawClient(server.url);
  await h.within(raw.opened, 3000, 'raw open');
  raw.send({ id: 1, connect: {} });
  await raw.waitMessage(m => m.id === 1);
  // --ping-interval 2s: a ping within ~2 s (+ slack).
  const ping = await raw.waitMessage(m => Object.keys(m).length === 0, 4000);
  assert.deepEqual(ping, {});
  // Never answer: --pong-timeout 4s -> 3012 "no pong".
  const closed = await raw.waitClose(9000);
  assert.equal(closed.code, 3012);
});

test('raw ws: pongs keep the connection open', { timeout: 15000 }, async () => {
  const raw = h.rawClient(server.url);
  await h.within(raw.opened, 3000, 'raw open');
  raw.ws.on('message', data => {
    if (data.toString().trim() === '{}') raw.ws.send('{}');
  });
  raw.send({ id: 1, connect: {} });
  await raw.waitMessage(m => m.id === 1);
  await h.sleep(7000);
  assert.equal(raw.closed, null, `still open after 7 s with pongs (closed: ${JSON.stringify(raw.closed)})`);
  assert.ok(raw.messages.filter(m => Object.keys(m).length === 0).length >= 2, 'at least two pings seen');
  raw.close();
});

test('3508 (SDK): send() -> disconnected with code 3508', { timeout: 15000 }, async () => {
  const a = await h.connectedClient(server.url);
  const disconnected = h.waitEvent(a.client, 'disconnected');
  await a.client.send({ hello: 'world' });
  const ctx = await disconnected;
  assert.equal(ctx.code, 3508);
  assert.equal(ctx.reason, 'not available');
  await h.sleep(500);
  assert.equal(a.client.state, 'disconnected', 'terminal: no reconnect');
});

test('1009 (SDK): publish larger than --max-command-bytes -> disconnected with code 3', { timeout: 15000 }, async () => {
  const a = await h.connectedClient(server.url);
  const channel = h.channelName('big');
  // Just under the limit still works.
  await h.within(a.client.publish(channel, { s: 'x'.repeat(MAX_COMMAND_BYTES - 200) }), 5000, 'publish under limit');
  const disconnected = h.waitEvent(a.client, 'disconnected');
  const big = a.client.publish(channel, { s: 'x'.repeat(MAX_COMMAND_BYTES * 2) });
  big.catch(() => {});
  const ctx = await disconnected;
  assert.equal(ctx.code, 3, 'SDK code 3: message size limit exceeded');
  await assert.rejects(h.within(big, 3000, 'big publish settles'));
  assert.equal(a.client.state, 'disconnected');
});

test('1009 (raw ws): the close code on the wire', { timeout: 10000 }, async () => {
  const raw = h.rawClient(server.url);
  await h.within(raw.opened, 3000, 'raw open');
  raw.send({ id: 1, connect: {} });
  await raw.waitMessage(m => m.id === 1);
  raw.send({ id: 2, publish: { channel: 'big', data: { s: 'y'.repeat(MAX_COMMAND_BYTES + 1) } } });
  const closed = await raw.waitClose(3000);
  assert.equal(closed.code, 1009);
});

test('raw ws: proto3-style encoding, anonymous info is {client} with user omitted', { timeout: 10000 }, async () => {
  // The brief: every field is omitted when empty; for anonymous publishers
  // info = {client}. (The SDKs also accept user: "", so this is about the wire.)
  const raw = h.rawClient(server.url);
  await h.within(raw.opened, 3000, 'raw open');
  const ch = h.channelName('enc');
  raw.send([{ connect: {}, id: 1 }, { subscribe: { channel: ch, join_leave: true }, id: 2 }]);
  const conn = await raw.waitMessage(m => m.id === 1);
  const join = await raw.waitMessage(m => m.push && m.push.join);
  assert.deepEqual(join.push.join.info, { client: conn.connect.client }, 'join info');
  raw.send({ id: 3, publish: { channel: ch, data: 'x' } });
  const pub = await raw.waitMessage(m => m.push && m.push.pub);
  assert.deepEqual(pub.push.pub.info, { client: conn.connect.client }, 'pub info');
  raw.send({ id: 4, presence: { channel: ch } });
  const pres = await raw.waitMessage(m => m.id === 4);
  assert.deepEqual(pres.presence.presence, { [conn.connect.client]: { client: conn.connect.client } }, 'presence info');
  raw.close();
});

test('111 and 3013 (SDK): publishes over --command-rate are refused as temporary, flooding reconnects', { timeout: 20000 }, async () => {
  // Its own server: 20 commands a second, bursts of 40.
  const limited = await h.startServer({ args: ['--command-rate', '20'] });
  const a = await h.connectedClient(limited.url);
  const channel = h.channelName('flood');
  const results = await Promise.allSettled(
    Array.from({ length: 60 }, (_, i) => a.client.publish(channel, { i })),
  );
  const ok = results.filter(r => r.status === 'fulfilled').length;
  const refused = results.filter(r => r.status === 'rejected').map(r => r.reason);
  assert.ok(ok >= 35 && ok <= 45, `about one burst accepted: ${ok}`);
  assert.ok(refused.length > 0, 'the rest refused');
  for (const e of refused) {
    assert.equal(e.code, 111, JSON.stringify(e));
    assert.equal(e.temporary, true, 'the SDK may retry later');
  }
  // Still connected: a burst is not a flood. Keep sending, and the server
  // closes with 3013, a code the SDK reconnects after.
  assert.equal(a.client.state, 'connected');
  const connecting = h.waitEvent(a.client, 'connecting', { filter: ctx => ctx.code === 3013 });
  for (let i = 0; i < 200 && a.client.state === 'connected'; i++) {
    a.client.publish(channel, { i }).catch(() => {});
  }
  const ctx = await connecting;
  assert.equal(ctx.reason, 'too many requests');
  await h.waitEvent(a.client, 'connected', { timeoutMs: 5000 });
  // The new connection starts with a full budget.
  await h.within(a.client.publish(channel, { after: true }), 3000, 'publish after the flood');
});
