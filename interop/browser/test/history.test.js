'use strict';
// History: joining a room shows its recent messages, newest at the bottom;
// scrolling up (or the "Load older messages" button) loads the pages before,
// without the view jumping, down to the first message.

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

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => `message ${from + i}`);

test('history loads on join and older pages load on scroll', { timeout: 60000 }, async () => {
  const writer = await h.rawCentrifuge(srv);
  // (A channel keeps publications once it has had a member.)
  await writer.command('subscribe', { channel: 'archive' });
  for (let i = 1; i <= 100; i++) {
    await writer.command('publish', {
      channel: 'archive',
      data: { text: `message ${i}`, user: 'archivist', ts: Date.UTC(2024, 0, 1, 12, 0, i % 60) },
    });
  }
  writer.close();

  const { page, problems } = await h.openChat(browser, srv, { name: 'reader', room: 'archive' });
  const log = page.locator('.log:not([hidden])');
  // The newest page (30), in order, the newest at the bottom and in view.
  let msgs = await h.eventually(() => h.messages(page), m => m.length === 30, { what: 'first page' });
  assert.deepEqual(msgs.map(m => m.text), range(71, 100));
  assert.deepEqual(msgs.map(m => m.offset), Array.from({ length: 30 }, (_, i) => 71 + i));
  assert.ok(msgs.every(m => m.who === 'archivist' && m.time !== ''), 'sender and sent time from history');
  await page.locator('li.msg', { hasText: 'message 100' }).waitFor();
  assert.ok(await log.evaluate(el => el.scrollHeight - el.scrollTop - el.clientHeight < 40), 'at the bottom');
  assert.ok(await page.getByRole('button', { name: 'Load older messages' }).isVisible());

  // Scroll to the top: the page before loads, above, and the view stays put
  // (message 71 is where it was, not pushed out by what came in above it).
  const top71 = () => page.locator('li.msg[data-offset="71"]').evaluate(li => li.getBoundingClientRect().top);
  // Scrolled to the top and measured at once, before the page that loads arrives.
  const before71 = await log.evaluate(el => {
    el.scrollTop = 0;
    return el.querySelector('li.msg[data-offset="71"]').getBoundingClientRect().top;
  });
  msgs = await h.eventually(() => h.messages(page), m => m.length === 60, { what: 'second page' });
  assert.deepEqual(msgs.map(m => m.text), range(41, 100));
  const after71 = await top71();
  assert.ok(Math.abs(after71 - before71) < 5, `view kept (${before71} → ${after71})`);
  assert.ok(await log.evaluate(el => el.scrollTop > 0), 'older messages are above, out of view');

  // With the keyboard: the button loads the next page.
  await page.getByRole('button', { name: 'Load older messages' }).focus();
  await page.keyboard.press('Enter');
  msgs = await h.eventually(() => h.messages(page), m => m.length === 90, { what: 'third page' });
  await log.evaluate(el => { el.scrollTop = 0; });
  msgs = await h.eventually(() => h.messages(page), m => m.length === 100, { what: 'last page' });
  assert.deepEqual(msgs.map(m => m.text), range(1, 100));
  // Nothing older: the button goes away.
  await page.getByRole('button', { name: 'Load older messages' }).waitFor({ state: 'hidden' });

  // Live messages still arrive at the bottom after all that.
  await h.say(page, 'and one more');
  msgs = await h.eventually(() => h.messages(page), m => m.length === 101, { what: 'live message' });
  assert.deepEqual(msgs.slice(-2).map(m => m.text), ['message 100', 'and one more']);
  assert.deepEqual(problems, []);
});

test('a newcomer sees what was said before they came', { timeout: 30000 }, async () => {
  const early = await h.openChat(browser, srv, { name: 'early', room: 'cafe' });
  await h.say(early.page, 'first!');
  await h.say(early.page, 'anyone?');
  await h.eventually(() => h.messages(early.page), m => m.length === 2, { what: 'sent' });
  await early.context.close();

  const late = await h.openChat(browser, srv, { name: 'late', room: 'cafe' });
  const msgs = await h.eventually(() => h.messages(late.page), m => m.length === 2, { what: 'history' });
  assert.deepEqual(msgs.map(m => [m.who, m.text]), [['early', 'first!'], ['early', 'anyone?']]);
  assert.deepEqual(late.problems, []);
});
