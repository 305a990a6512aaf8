'use strict';
// Tokens with centrifuge-js: a connection token from getToken, an expired
// token the SDK replaces and later refreshes without losing its
// subscription, a subscription token for a private `$` channel, and a bad
// token reported as the terminal disconnect 3500. One server for this
// file, started with an HMAC secret; tokens are signed here (HS256).

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const h = require('../lib/harness');

const SECRET = 'interop-auth-secret';
let server;

/** An HS256 JWT with `claims`, signed with `secret`. */
function jwt(claims, secret = SECRET) {
  const enc = obj => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const input = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  const sig = crypto.createHmac('sha256', secret).update(input).digest('base64url');
  return `${input}.${sig}`;
}

const nowSecs = () => Math.floor(Date.now() / 1000);

before(async () => {
  server = await h.startServer({ args: ['--token-hmac-secret', SECRET] });
});

afterEach(() => {
  h.closeAllClients();
});

after(async () => {
  h.closeAllClients();
  await h.stopAll();
});

test('connect with a token from getToken: the user is the token\'s sub', { timeout: 15000 }, async () => {
  let calls = 0;
  const { client } = await h.connectedClient(server.url, {
    getToken: async () => {
      calls += 1;
      return jwt({ sub: 'alice', exp: nowSecs() + 3600, info: { name: 'Alice' } });
    },
  });
  assert.equal(calls, 1);
  const channel = h.channelName('auth');
  const { sub } = await h.subscribed(client, channel);
  const pub = h.waitEvent(sub, 'publication', { what: 'own publication' });
  await sub.publish({ text: 'hi' });
  const ctx = await pub;
  assert.equal(ctx.info.user, 'alice');
  const presence = await sub.presence();
  const users = Object.values(presence.clients).map(c => c.user);
  assert.deepEqual(users, ['alice']);
});

test('an expired token is replaced, then refreshed, and the subscription stays', { timeout: 20000 }, async () => {
  const issued = [];
  const getToken = async () => {
    // The first token has already expired (109: the SDK asks again); the
    // next ones live 2 s, so the SDK sends `refresh` while subscribed.
    const exp = issued.length === 0 ? nowSecs() - 60 : nowSecs() + 2;
    issued.push(exp);
    return jwt({ sub: 'bob', exp });
  };
  const c = h.newClient(server.url, { getToken });
  const errors = h.collect(c, 'error');
  const connected = h.waitEvent(c, 'connected', { what: 'connected' });
  c.connect();
  await connected;
  assert.ok(issued.length >= 2, `a second token after the expired one (${issued.length})`);
  assert.ok(errors.some(e => e.error && e.error.code === 109), JSON.stringify(errors));
  const channel = h.channelName('refresh');
  const { sub } = await h.subscribed(c, channel);
  const unsubscribed = h.collect(sub, 'unsubscribed');
  const disconnected = h.collect(c, 'disconnected');
  const before = issued.length;
  await h.waitUntil(() => issued.length >= before + 2, { timeoutMs: 9000, what: 'two refreshes' });
  assert.equal(c.state, 'connected');
  assert.equal(sub.state, 'subscribed');
  assert.equal(unsubscribed.length, 0);
  assert.equal(disconnected.length, 0);
  const pub = h.waitEvent(sub, 'publication', { what: 'publication after refresh' });
  await sub.publish({ text: 'still here' });
  assert.equal((await pub).data.text, 'still here');
});

test('a subscription token opens a private $ channel; none gets 103', { timeout: 15000 }, async () => {
  const { client } = await h.connectedClient(server.url, {
    getToken: async () => jwt({ sub: 'carol', exp: nowSecs() + 3600 }),
  });
  const channel = `$${h.channelName('private')}`;
  const asked = [];
  const { sub } = await h.subscribed(client, channel, {
    getToken: async ctx => {
      asked.push(ctx.channel);
      return jwt({ sub: 'carol', channel: ctx.channel, exp: nowSecs() + 3600 });
    },
  });
  assert.deepEqual(asked, [channel]);
  const pub = h.waitEvent(sub, 'publication', { what: 'private publication' });
  await sub.publish({ text: 'psst' });
  assert.equal((await pub).info.user, 'carol');

  const { client: other } = await h.connectedClient(server.url, {
    getToken: async () => jwt({ sub: 'dave', exp: nowSecs() + 3600 }),
  });
  const refused = other.newSubscription(channel);
  const gone = h.waitEvent(refused, 'unsubscribed', { what: 'refused subscription' });
  refused.subscribe();
  const ctx = await gone;
  assert.equal(ctx.code, 103);
});

test('a token with a bad signature: 3500, a terminal disconnect', { timeout: 15000 }, async () => {
  const c = h.newClient(server.url, {
    getToken: async () => jwt({ sub: 'mallory', exp: nowSecs() + 3600 }, 'guessed'),
  });
  const disconnected = h.waitEvent(c, 'disconnected', { what: 'disconnected' });
  c.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 3500);
  assert.equal(ctx.reason, 'invalid token');
  await h.sleep(800);
  assert.equal(c.state, 'disconnected', 'no reconnect');
});
