'use strict';
// centrifuge-js against three hubbub nodes on one Redis (`--store redis`),
// run by interop/cluster.sh, which starts and stops the redis-server and
// sets HUBBUB_REDIS_URL. Each test starts its own three nodes.
//
// - SDK clients on different nodes share one channel: a publication on any
//   node reaches all of them once, with one offset order.
// - A client behind a "balancer" (a `ws` class that sends each new
//   connection to the next node) loses its node to SIGKILL, reconnects to a
//   different node by itself, and recovers exactly what it missed.
// - A client moved to another node with disconnect/connect (the endpoint
//   switches) recovers there.

const { test, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const REDIS_URL = process.env.HUBBUB_REDIS_URL;

afterEach(() => {
  h.closeAllClients();
});

after(async () => {
  h.closeAllClients();
  await h.stopAll();
});

async function threeNodes() {
  assert.ok(REDIS_URL, 'HUBBUB_REDIS_URL is set (run interop/cluster.sh)');
  const args = ['--store', 'redis', '--redis-url', REDIS_URL, '--shards', '2'];
  return Promise.all([0, 1, 2].map(() => h.startServer({ args })));
}

/**
 * A `ws` WebSocket class that stands for a load balancer: every new
 * connection goes to the next URL of `state.urls` that is listed as up,
 * whatever URL the SDK asked for. `state.used` records where each went.
 */
function balancer(state) {
  state.next = state.next || 0;
  state.used = state.used || [];
  return class Balanced extends h.WebSocket {
    constructor(_url, ...rest) {
      const up = state.urls.filter(u => !state.down.has(u));
      const url = up[state.next % up.length];
      state.next += 1;
      state.used.push(url);
      super(url, ...rest);
    }
  };
}

function newSub(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  sub.on('error', () => {});
  return sub;
}

test('three nodes: SDK clients on each get every publication once, one order',
  { timeout: 30000 }, async () => {
    const nodes = await threeNodes();
    const channel = h.channelName('cluster');
    const clients = [];
    for (const n of nodes) {
      const { client } = await h.connectedClient(n.url);
      const sub = newSub(client, channel, { recoverable: true, positioned: true });
      const pubs = h.collect(sub, 'publication');
      const p = h.waitEvent(sub, 'subscribed');
      sub.subscribe();
      await p;
      clients.push({ client, sub, pubs });
    }
    // Each node's client publishes two, without waiting for the others.
    await Promise.all(clients.map((c, i) => (async () => {
      await c.client.publish(channel, { from: i, n: 0 });
      await c.client.publish(channel, { from: i, n: 1 });
    })()));
    await h.waitUntil(() => clients.every(c => c.pubs.length >= 6),
      { timeoutMs: 10000, what: 'six publications on every node' });
    await h.sleep(200);
    const orders = clients.map(c => c.pubs.map(p => [p.offset, p.data.from, p.data.n]));
    for (const [i, order] of orders.entries()) {
      assert.deepEqual(order.map(o => o[0]), [1, 2, 3, 4, 5, 6], `node ${i}: offsets 1..6, once each`);
      for (const from of [0, 1, 2]) {
        assert.deepEqual(order.filter(o => o[1] === from).map(o => o[2]), [0, 1],
          `node ${i}: publisher ${from}'s own order`);
      }
      assert.deepEqual(order, orders[0], 'the same publication at each offset on every node');
    }
    // History asked on node C holds what node A's client published.
    const hist = await clients[2].sub.history({ limit: 10 });
    assert.equal(hist.publications.length, 6);
    assert.deepEqual(hist.publications.map(p => [p.offset, p.data.from, p.data.n]), orders[0]);
  });

test('node killed: the SDK reconnects to a different node and recovers exactly',
  { timeout: 40000 }, async () => {
    const nodes = await threeNodes();
    const channel = h.channelName('failover');
    const lb = { urls: nodes.map(n => n.url), down: new Set() };
    // Its first connection goes to node A. Slow reconnects, so that
    // publications happen while it is away.
    const a = h.newClient(nodes[0].url, {
      websocket: balancer(lb),
      minReconnectDelay: 1500,
      maxReconnectDelay: 1500,
    });
    const connected = h.collect(a, 'connected');
    a.connect();
    await h.waitUntil(() => connected.length === 1, { what: 'connected to node A' });
    assert.equal(lb.used[0], nodes[0].url);
    const sub = newSub(a, channel, { recoverable: true });
    const subscribedCtxs = h.collect(sub, 'subscribed');
    const pubs = h.collect(sub, 'publication');
    sub.subscribe();
    await h.waitUntil(() => subscribedCtxs.length === 1, { what: 'subscribed' });

    // A publisher on node B; publications 1..3 before the crash.
    const b = await h.connectedClient(nodes[1].url);
    for (const n of [1, 2, 3]) {
      await b.client.publish(channel, { n });
    }
    await h.waitUntil(() => pubs.length === 3, { what: 'publications before the crash' });

    lb.down.add(nodes[0].url);
    const exit = await h.stopServer(nodes[0], { signal: 'SIGKILL' });
    assert.equal(exit.signal, 'SIGKILL');
    // 4..8 while it is away, from node B.
    for (const n of [4, 5, 6, 7, 8]) {
      await b.client.publish(channel, { n });
    }
    assert.notEqual(a.state, 'connected', 'still away while they were published');

    await h.waitUntil(() => subscribedCtxs.length === 2, { timeoutMs: 15000, what: 'resubscribed' });
    const moved = lb.used[lb.used.length - 1];
    assert.notEqual(moved, nodes[0].url, 'reconnected to a different node');
    const resub = subscribedCtxs[1];
    assert.equal(resub.wasRecovering, true);
    assert.equal(resub.recovered, true, 'the stream lives in Redis: recovered on another node');
    await h.waitUntil(() => pubs.length === 8, { what: 'the missed publications' });
    // Live again on the new node: one more from node C's side.
    const c = await h.connectedClient(nodes[2].url);
    await c.client.publish(channel, { n: 9 });
    await h.waitUntil(() => pubs.length === 9, { what: 'a live publication after the move' });
    await h.sleep(200);
    assert.deepEqual(pubs.map(p => [p.offset, p.data.n]),
      [1, 2, 3, 4, 5, 6, 7, 8, 9].map(n => [n, n]),
      'exactly the missed ones, once each, in order, then live');
  });

test('endpoint switch: disconnect from node A, connect to node C, recover there',
  { timeout: 30000 }, async () => {
    const nodes = await threeNodes();
    const channel = h.channelName('switch');
    const lb = { urls: nodes.map(n => n.url), down: new Set() };
    const a = h.newClient(nodes[0].url, { websocket: balancer(lb) });
    const connected = h.collect(a, 'connected');
    a.connect();
    await h.waitUntil(() => connected.length === 1, { what: 'connected' });
    const sub = newSub(a, channel, { recoverable: true });
    const subscribedCtxs = h.collect(sub, 'subscribed');
    const pubs = h.collect(sub, 'publication');
    sub.subscribe();
    await h.waitUntil(() => subscribedCtxs.length === 1, { what: 'subscribed' });
    const pub = await h.connectedClient(nodes[1].url);
    await pub.client.publish(channel, { n: 1 });
    await h.waitUntil(() => pubs.length === 1, { what: 'first publication' });

    // The balancer now sends it to node C (index 2).
    a.disconnect();
    await pub.client.publish(channel, { n: 2 });
    await pub.client.publish(channel, { n: 3 });
    lb.next = 2;
    a.connect();
    await h.waitUntil(() => subscribedCtxs.length === 2, { timeoutMs: 10000, what: 'resubscribed' });
    assert.equal(lb.used[lb.used.length - 1], nodes[2].url);
    assert.equal(subscribedCtxs[1].recovered, true);
    await h.waitUntil(() => pubs.length === 3, { what: 'recovered publications' });
    assert.deepEqual(pubs.map(p => [p.offset, p.data.n]), [[1, 1], [2, 2], [3, 3]]);
  });
