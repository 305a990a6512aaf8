'use strict';
// centrifuge-js against hubbub: connect, subscribe, publish, join/leave,
// presence, history, rpc, namespaces and recovery. One server for this file.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let server;

before(async () => {
  server = await h.startServer();
});

afterEach(() => {
  h.closeAllClients();
});

after(async () => {
  h.closeAllClients();
  await h.stopAll();
});

function newSub(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  sub.on('error', () => {});
  return sub;
}

test('connect: state connected, client id present', { timeout: 15000 }, async () => {
  const c = h.newClient(server.url);
  const connected = h.waitEvent(c, 'connected');
  c.connect();
  const ctx = await connected;
  assert.equal(c.state, 'connected');
  assert.equal(typeof ctx.client, 'string');
  assert.ok(ctx.client.length > 0, 'connect reply carries a client id');
  assert.match(ctx.client, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i,
    'client id is a UUID');
  assert.equal(typeof ctx.transport, 'string');
  await h.within(c.ready(), 2000, 'ready() after connected');
});

test('subscribe called before connect: connect + subscribe in one frame', { timeout: 15000 }, async () => {
  const rec = {};
  const c = h.newClient(server.url, { websocket: h.instrumentedWebSocket(rec) });
  const channel = h.channelName('early');
  const sub = newSub(c, channel);
  const subscribedP = h.waitEvent(sub, 'subscribed');
  sub.subscribe();
  assert.equal(sub.state, 'subscribing');
  const connected = h.waitEvent(c, 'connected');
  c.connect();
  await connected;
  const ctx = await subscribedP;
  assert.equal(ctx.channel, channel);
  assert.equal(sub.state, 'subscribed');
  // The point of this test: the server saw both commands in the first frame.
  const first = rec.sentFrames[0].split('\n').filter(Boolean).map(l => JSON.parse(l));
  assert.ok(first.some(m => m.connect !== undefined), `first frame has connect: ${rec.sentFrames[0]}`);
  assert.ok(first.some(m => m.subscribe && m.subscribe.channel === channel),
    `first frame has subscribe: ${rec.sentFrames[0]}`);
});

test('publish: publications carry offset 1, 2 and info.client of the publisher', { timeout: 15000 }, async () => {
  const channel = h.channelName('pub');
  const a = await h.connectedClient(server.url);
  const b = await h.connectedClient(server.url);
  const subA = newSub(a.client, channel);
  const subB = newSub(b.client, channel);
  const pubsA = h.collect(subA, 'publication');
  const pubsB = h.collect(subB, 'publication');
  const sa = h.waitEvent(subA, 'subscribed');
  const sb = h.waitEvent(subB, 'subscribed');
  subA.subscribe();
  subB.subscribe();
  await Promise.all([sa, sb]);

  const r1 = await h.within(a.client.publish(channel, { text: 'one' }), 5000, 'publish 1');
  assert.deepEqual(r1, {});
  await h.within(subA.publish({ text: 'two', n: 2 }), 5000, 'publish 2 (via subscription)');

  await h.waitUntil(() => pubsA.length >= 2 && pubsB.length >= 2, { what: 'two publications on both clients' });
  for (const [who, pubs] of [['publisher', pubsA], ['other', pubsB]]) {
    assert.equal(pubs.length, 2, `${who}: exactly two publications`);
    assert.deepEqual(pubs.map(p => p.data), [{ text: 'one' }, { text: 'two', n: 2 }], `${who}: data`);
    assert.deepEqual(pubs.map(p => p.offset), [1, 2], `${who}: offsets`);
    for (const p of pubs) {
      assert.equal(p.channel, channel);
      assert.ok(p.info, `${who}: publication has info`);
      assert.equal(p.info.client, a.clientId, `${who}: info.client is the publisher's client id`);
      assert.ok(p.info.user === '' || p.info.user === undefined, `${who}: anonymous user, got ${p.info.user}`);
    }
  }
  await h.sleep(200);
  assert.equal(pubsA.length, 2, 'no duplicate publications');
});

test('join/leave: seen by a subscriber with joinLeave enabled', { timeout: 15000 }, async () => {
  const channel = h.channelName('jl');
  const a = await h.connectedClient(server.url);
  const subA = newSub(a.client, channel, { joinLeave: true });
  const joins = h.collect(subA, 'join');
  const leaves = h.collect(subA, 'leave');
  await new Promise((resolve, reject) => {
    subA.once('subscribed', resolve);
    subA.subscribe();
    setTimeout(() => reject(new Error('subscribe timed out')), 5000);
  });
  // The joiner gets its own join right after the subscribe reply.
  await h.waitUntil(() => joins.length >= 1, { what: 'own join' });
  assert.equal(joins[0].info.client, a.clientId, 'first join is our own');
  assert.equal(joins[0].channel, channel);

  const b = await h.connectedClient(server.url);
  const subB = newSub(b.client, channel);
  const sb = h.waitEvent(subB, 'subscribed');
  subB.subscribe();
  await sb;
  await h.waitUntil(() => joins.some(j => j.info.client === b.clientId), { what: "B's join" });

  subB.unsubscribe();
  await h.waitUntil(() => leaves.some(l => l.info.client === b.clientId), { what: "B's leave after unsubscribe" });

  // A disconnecting client leaves every channel too.
  const c = await h.connectedClient(server.url);
  await h.subscribed(c.client, channel);
  await h.waitUntil(() => joins.some(j => j.info.client === c.clientId), { what: "C's join" });
  c.client.disconnect();
  await h.waitUntil(() => leaves.some(l => l.info.client === c.clientId), { what: "C's leave after disconnect" });
  assert.ok(!leaves.some(l => l.info.client === a.clientId), 'no leave for ourselves');
});

test('presence lists 2 clients; presence_stats 2 clients, 1 user', { timeout: 15000 }, async () => {
  const channel = h.channelName('pres');
  const a = await h.connectedClient(server.url);
  const b = await h.connectedClient(server.url);
  await h.subscribed(a.client, channel);
  await h.subscribed(b.client, channel);

  const pres = await h.within(a.client.presence(channel), 5000, 'presence');
  assert.ok(pres.clients, 'presence result has clients');
  assert.deepEqual(Object.keys(pres.clients).sort(), [a.clientId, b.clientId].sort());
  for (const [id, info] of Object.entries(pres.clients)) {
    assert.equal(info.client, id, 'ClientInfo.client equals its key');
    assert.ok(info.user === '' || info.user === undefined, 'anonymous');
  }
  // The same through the subscription object.
  const viaSub = await h.within(b.client.getSubscription(channel).presence(), 5000, 'sub.presence');
  assert.equal(Object.keys(viaSub.clients).length, 2);

  const stats = await h.within(a.client.presenceStats(channel), 5000, 'presenceStats');
  assert.deepEqual(stats, { numClients: 2, numUsers: 1 });
});

test('history with limit 0: offset = number of publications, epoch non-empty', { timeout: 15000 }, async () => {
  const channel = h.channelName('hist');
  const a = await h.connectedClient(server.url);
  // Subscribed first: Centrifugo's usual permission is history for subscribers
  // (allow_history_for_subscriber); the subscription also keeps the channel alive.
  const { ctx } = await h.subscribed(a.client, channel, { recoverable: true });
  // Nobody published yet: offset 0 (the SDK reads a missing field as 0).
  const empty = await h.within(a.client.history(channel, { limit: 0 }), 5000, 'history (empty)');
  assert.equal(empty.offset, 0);
  assert.deepEqual(empty.publications, []);
  if (ctx.streamPosition) {
    assert.equal(ctx.streamPosition.offset, 0);
    assert.equal(ctx.streamPosition.epoch, empty.epoch, 'subscribe reply and history agree on the epoch');
  }

  for (let i = 0; i < 3; i++) {
    await h.within(a.client.publish(channel, { i }), 5000, `publish ${i}`);
  }
  const res = await h.within(a.client.history(channel, { limit: 0 }), 5000, 'history');
  assert.equal(res.offset, 3);
  assert.equal(typeof res.epoch, 'string');
  assert.ok(res.epoch.length > 0, 'epoch non-empty');
  assert.deepEqual(res.publications, [], 'limit 0: no publications');
  assert.equal(res.epoch, empty.epoch, 'epoch stable while the channel lives');
  // Same through the subscription object.
  const viaSub = await h.within(a.client.getSubscription(channel).history({ limit: 0 }), 5000, 'sub.history');
  assert.equal(viaSub.offset, 3);
});

test('rpc with any method: error 104', { timeout: 15000 }, async () => {
  const a = await h.connectedClient(server.url);
  await assert.rejects(h.within(a.client.rpc('nope', { x: 1 }), 5000, 'rpc'), err => {
    assert.equal(err.code, 104);
    assert.equal(typeof err.message, 'string');
    return true;
  });
  assert.equal(a.client.state, 'connected', 'an rpc error does not disconnect');
});

test('unknown namespace: subscription unsubscribed with code 102', { timeout: 15000 }, async () => {
  const a = await h.connectedClient(server.url);
  const sub = newSub(a.client, 'nope:room');
  const unsub = h.waitEvent(sub, 'unsubscribed');
  sub.subscribe();
  const ctx = await unsub;
  assert.equal(ctx.code, 102);
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(a.client.state, 'connected');
});

test('recovery: same epoch and offset at top -> recovered; missed publications -> recovered with them', { timeout: 20000 }, async () => {
  const channel = h.channelName('rec');
  const a = await h.connectedClient(server.url);
  const b = await h.connectedClient(server.url);
  // B stays subscribed throughout, so the channel never loses its last
  // subscriber (whether a channel keeps its epoch with no subscribers is not
  // part of the contract tested here).
  await h.subscribed(b.client, channel);
  const sub = newSub(a.client, channel, { recoverable: true });
  const pubs = h.collect(sub, 'publication');
  const subscribedCtxs = h.collect(sub, 'subscribed');
  sub.subscribe();
  await h.waitUntil(() => subscribedCtxs.length === 1, { what: 'first subscribed' });
  const first = subscribedCtxs[0];
  assert.equal(first.recoverable, true, 'subscribe reply says recoverable (history positions on)');
  assert.ok(first.streamPosition && first.streamPosition.epoch, 'subscribe reply carries an epoch');
  assert.equal(first.wasRecovering, false);

  await b.client.publish(channel, { n: 1 });
  await h.waitUntil(() => pubs.length === 1, { what: 'publication 1' });
  assert.equal(pubs[0].offset, 1);

  // Reconnect with nothing missed: recovered.
  a.client.disconnect();
  const again = h.waitEvent(sub, 'subscribed', { what: 'resubscribed (nothing missed)' });
  a.client.connect();
  const ctx2 = await again;
  assert.equal(ctx2.wasRecovering, true, 'client asked to recover');
  assert.equal(ctx2.recovered, true, 'offset == top, same epoch: recovered');
  assert.equal(ctx2.streamPosition.epoch, first.streamPosition.epoch);

  // Miss a publication: recovered, and the missed one is delivered before live ones.
  a.client.disconnect();
  await b.client.publish(channel, { n: 2 });
  const third = h.waitEvent(sub, 'subscribed', { what: 'resubscribed (one missed)' });
  a.client.connect();
  const ctx3 = await third;
  assert.equal(ctx3.wasRecovering, true);
  assert.equal(ctx3.recovered, true, 'the missed publication is in the window: recovered');
  await h.waitUntil(() => pubs.length === 2, { what: 'recovered publication' });
  assert.equal(pubs[1].offset, 2);
  assert.deepEqual(pubs[1].data, { n: 2 });

  // Live publications continue from the top.
  await b.client.publish(channel, { n: 3 });
  await h.waitUntil(() => pubs.some(p => p.offset === 3), { what: 'publication 3' });
});
