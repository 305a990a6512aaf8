'use strict';
// The first minute: a server on its built-in defaults (no config file) has
// everything the page uses, typing signals included (the `typing`
// namespace is built in).

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

test('on the built-in defaults the page chats, names people and shows typing', { timeout: 30000 }, async () => {
  const wes = await h.openChat(browser, srv, { name: 'wes', room: 'plain' });
  const xia = await h.openChat(browser, srv, { name: 'xia', room: 'plain' });
  await h.eventually(() => h.onlineNames(wes.page), n => n.join() === 'wes,xia', { what: 'names' });
  assert.equal(await wes.page.locator('#notice').innerText(), '', 'no warning about typing');
  await h.messageBox(xia.page).pressSequentially('hel', { delay: 30 });
  await h.eventually(() => wes.page.locator('#typing').innerText(), t => t === 'xia is typing…',
    { what: 'typing shown' });
  await h.messageBox(xia.page).fill('');
  await h.say(xia.page, 'still works');
  const msgs = await h.eventually(() => h.messages(wes.page), m => m.length === 1, { what: 'message' });
  assert.deepEqual([msgs[0].who, msgs[0].text], ['xia', 'still works']);
  assert.deepEqual(wes.problems, []);
  assert.deepEqual(xia.problems, []);
});
