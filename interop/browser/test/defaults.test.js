'use strict';
// A server started without hubbub.toml has no `typing` namespace: the page
// says typing indicators are off (the server's 102) and chat still works.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let srv;
let browser;

before(async () => {
  srv = await h.startServer({ config: null });
  browser = await h.launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  await h.stopAll();
});

test('without the typing namespace the page says so and still chats', { timeout: 30000 }, async () => {
  const wes = await h.openChat(browser, srv, { name: 'wes', room: 'plain' });
  const xia = await h.openChat(browser, srv, { name: 'xia', room: 'plain' });
  const notice = await h.eventually(() => wes.page.locator('#notice').innerText(), t => t !== '',
    { what: 'notice' });
  assert.match(notice, /^Typing indicators and the names of other browser users are off here: .*error 102\)/);
  await h.say(xia.page, 'still works');
  const msgs = await h.eventually(() => h.messages(wes.page), m => m.length === 1, { what: 'message' });
  assert.deepEqual([msgs[0].who, msgs[0].text], ['xia', 'still works']);
  // Once xia has said something, her name is known from the message.
  await h.eventually(() => h.onlineNames(wes.page), n => n.join() === 'wes,xia', { what: 'names' });
  assert.deepEqual(wes.problems, []);
});
