'use strict';
// Server restart: SIGTERM closes every connection with 3001 "shutdown" and the
// server exits 0; a new server on the same port gets the SDK back on its own
// (reconnect + resubscribe), and live publications flow again.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

after(async () => {
  h.closeAllClients();
  await h.stopAll();
});

test('restart: SDK reconnects and resubscribes by itself', { timeout: 40000 }, async () => {
  const port = await h.freePort();
  const first = await h.startServer({ port });
  const channel = h.channelName('restart');

  const a = await h.connectedClient(first.url);
  const sub = a.client.newSubscription(channel, { joinLeave: true });
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
  if (resub.wasRecovering) {
    assert.equal(resub.recovered, false, 'new epoch after restart: not recovered');
  }
  assert.ok(connecting.some(c => c.code === 3001));

  // A publication from another client after the restart is received.
  const b = await h.connectedClient(second.url);
  await b.client.publish(channel, { after: true });
  await h.waitUntil(() => pubs.length === 2, { what: 'publication after restart' });
  assert.deepEqual(pubs[1].data, { after: true });
  assert.equal(pubs[1].offset, 1, 'fresh server: the channel starts again at offset 1');
  assert.equal(pubs[1].info.client, b.clientId);
});
