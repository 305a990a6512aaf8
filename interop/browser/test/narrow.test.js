'use strict';
// At a phone's width (375 px) the page fits without sideways scrolling, and
// joining, chatting and the online list still work, with touch-sized
// controls and the keyboard.

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

const PHONE = { width: 375, height: 667 };

async function fits(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
}

test('the page works at a phone\'s width', { timeout: 30000 }, async () => {
  const phone = await h.openChat(browser, srv, { viewport: PHONE });
  assert.ok(await fits(phone.page), 'sign-in fits');
  // Keyboard only: the name field, then the room, then Join.
  await phone.page.getByLabel('Your name').focus();
  await phone.page.keyboard.type('pat');
  await phone.page.keyboard.press('Tab');
  await phone.page.keyboard.press('ControlOrMeta+A');
  await phone.page.keyboard.type('pocket');
  await phone.page.keyboard.press('Enter');
  await h.waitConnected(phone.page);

  const desk = await h.openChat(browser, srv, { name: 'quinn', room: 'pocket' });
  await h.say(desk.page, 'a long line without spaces: ' + 'x'.repeat(300));
  await h.eventually(() => h.messages(phone.page), m => m.length === 1, { what: 'message on the phone' });
  await h.say(phone.page, 'typed on a phone');
  await h.eventually(() => h.messages(desk.page), m => m.length === 2, { what: 'message from the phone' });

  const page = phone.page;
  assert.ok(await fits(page), 'the chat fits: no sideways scrolling, long words wrap');
  await h.eventually(() => h.onlineNames(page), n => n.join() === 'pat,quinn', { what: 'online list' });
  for (const loc of [h.messageBox(page), page.getByRole('button', { name: 'Send' }),
    page.locator('#conn'), page.locator('#online'), page.locator('.log:not([hidden]) li.msg').last()]) {
    const box = await loc.boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= PHONE.width + 1, 'inside the screen');
    assert.ok(box.y >= 0 && box.y + box.height <= PHONE.height + 1, 'on screen without scrolling the page');
  }
  const send = await page.getByRole('button', { name: 'Send' }).boundingBox();
  assert.ok(send.height >= 32, `Send is big enough to tap (${send.height} px)`);
  await page.screenshot({ path: h.screenshotPath('chat-phone.png') });
  assert.deepEqual(phone.problems, []);
  assert.deepEqual(desk.problems, []);
});
