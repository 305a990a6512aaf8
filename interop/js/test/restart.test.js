'use strict';
// Server restart: SIGTERM closes every connection with 3001 "shutdown" and the
// server exits 0; a new server on the same port and data directory gets the
// SDK back on its own (reconnect, resubscribe, recover), and the channel's
// stream goes on where it was. After a SIGKILL too: the SDK's `subscribed`
// event says `recovered: true` and it delivers exactly what it missed.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

after(async () => {
  h.closeAllClients();
  await h.stopAll();
});

test('restart: SDK reconnects, resubscribes and recovers by itself', { timeout: 40000 }, async () => {
  const port = await h.freePort();
  const first = await h.startServer({ port });
  const channel = h.channelName('restart');

  const a = await h.connectedClient(first.url);
  const sub = a.client.newSubscription(channel, { joinLeave: true, recoverable: true });
  sub.on('error', () => {});
  const subscribedCtxs = h.collect(sub, 'subscribed');
  const pubs = h.collect(sub, 'publication');
  const connecting = h.collect(a.client, 'connecting');
  const connectedCtxs = h.collect(a.client, 'connected');
  sub.subscribe();
  await h.waitUntil(() => subscribedCtxs.length === 1, { what: 'subscribed' });

  // A publication before the restart (offset 1 on the first server).
  await a.client.publish(channel, { before: true });
  await h.waitUntil(() => pubs.length === 1, { what: 'publication before restart' });
  assert.equal(pubs[0].offset, 1);

  const closedWith3001 = h.waitEvent(a.client, 'connecting', {
    filter: ctx => ctx.code === 3001, what: 'connecting 3001', timeoutMs: 5000,
  });
  const exit = await h.stopServer(first, { signal: 'SIGTERM', timeoutMs: 8000 });
  const cctx = await closedWith3001;
  assert.equal(cctx.reason, 'shutdown');
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null },
    `server exits 0 on SIGTERM (got ${JSON.stringify(exit)})`);
  assert.equal(a.client.state, 'connecting', 'client reconnects after 3001');
  assert.equal(sub.state, 'subscribing', 'subscription waits to resubscribe');

  // Let the SDK fail a reconnect attempt or two against the closed port.
  await h.sleep(300);
  const second = await h.startServer({ port });
  await h.waitUntil(() => a.client.state === 'connected' && connectedCtxs.length >= 1,
    { timeoutMs: 10000, what: 'reconnected to the new server' });
  await h.waitUntil(() => sub.state === 'subscribed' && subscribedCtxs.length === 2,
    { timeoutMs: 5000, what: 'resubscribed' });
  const resub = subscribedCtxs[1];
  assert.notEqual(connectedCtxs[0].client, a.clientId, 'new connection, new client id');
  assert.equal(resub.wasRecovering, true, 'the SDK asked to recover');
  assert.equal(resub.recovered, true, 'the same stream after a restart: recovered');
  assert.ok(connecting.some(c => c.code === 3001));

  // A publication from another client after the restart is received.
  const b = await h.connectedClient(second.url);
  await b.client.publish(channel, { after: true });
  await h.waitUntil(() => pubs.length === 2, { what: 'publication after restart' });
  assert.deepEqual(pubs[1].data, { after: true });
  assert.equal(pubs[1].offset, 2, 'the stream goes on after a restart');
  assert.equal(pubs[1].info.client, b.clientId);
});

test('SIGKILL: the SDK recovers exactly the publications it missed', { timeout: 40000 }, async () => {
  const port = await h.freePort();
  const first = await h.startServer({ port });
  const channel = h.channelName('crash');

  // Slow reconnects, so the publications below happen while it is away.
  const a = await h.connectedClient(first.url, { minReconnectDelay: 2500, maxReconnectDelay: 2500 });
  const sub = a.client.newSubscription(channel, { recoverable: true });
  sub.on('error', () => {});
  const subscribedCtxs = h.collect(sub, 'subscribed');
  const pubs = h.collect(sub, 'publication');
  sub.subscribe();
  await h.waitUntil(() => subscribedCtxs.length === 1, { what: 'subscribed' });
  for (const n of [1, 2]) {
    await a.client.publish(channel, { n });
  }
  await h.waitUntil(() => pubs.length === 2, { what: 'publications before the crash' });

  const exit = await h.stopServer(first, { signal: 'SIGKILL' });
  assert.equal(exit.signal, 'SIGKILL');
  const second = await h.startServer({ port });
  // Another client publishes three lines while the first one is away.
  const b = await h.connectedClient(second.url);
  await h.subscribed(b.client, channel);
  for (const n of [3, 4, 5]) {
    await b.client.publish(channel, { n });
  }
  assert.equal(a.client.state, 'connecting', 'still away while they were published');

  await h.waitUntil(() => subscribedCtxs.length === 2, { timeoutMs: 10000, what: 'resubscribed' });
  const resub = subscribedCtxs[1];
  assert.equal(resub.wasRecovering, true);
  assert.equal(resub.recovered, true, 'recovered across a crash');
  await h.waitUntil(() => pubs.length === 5, { what: 'the missed publications' });
  await h.sleep(200);
  assert.deepEqual(pubs.map(p => [p.offset, p.data.n]), [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]],
    'exactly the missed ones, once each, in order');
});
