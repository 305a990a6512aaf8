'use strict';
// A seed-protocol client (plain WebSocket at /ws/{room}?username=) in the same
// room as a browser user: each sees the other online and reads the other's
// messages.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let srv;
let browser;

before(async () => {
  srv = await h.startServer();
  browser = await h.launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  await h.stopAll();
});

test('a seed client in the same room is seen and chats like anyone else', { timeout: 30000 }, async () => {
  const { page, problems } = await h.openChat(browser, srv, { name: 'ada', room: 'mixed' });
  const sam = await h.seedClient(srv, 'mixed', 'sam');
  await sam.waitFor(m => m.type === 'user_joined' && m.username === 'sam', 'own join notice');

  // sam shows up in the online list under his username, live.
  await h.eventually(() => h.onlineNames(page), n => n.join() === 'ada,sam', { what: 'sam online' });

  sam.say('hi from a plain websocket');
  const msgs = await h.eventually(() => h.messages(page), m => m.length === 1, { what: 'seed line' });
  assert.equal(msgs[0].who, 'sam');
  assert.equal(msgs[0].text, 'hi from a plain websocket');
  assert.match(msgs[0].time, /\d\d?:\d\d/, 'a live line gets the time it arrived');

  await h.say(page, 'hello sam');
  const line = await sam.waitFor(m => m.type === 'chat' && m.content === 'hello sam', 'browser line');
  assert.equal(line.room, 'mixed');
  // Browser connections are anonymous until tokens exist: the seed protocol
  // gets no username for them (README, "The browser page").
  assert.equal(line.username, '');

  // sam leaves: gone from the list.
  sam.close();
  await h.eventually(() => h.onlineNames(page), n => n.join() === 'ada', { what: 'sam gone' });
  assert.deepEqual(problems, []);
});
