'use strict';
// Everything a user types reaches other pages as text: markup in names, room
// names and messages is shown literally and never becomes elements or runs.

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

const NAME = '<img src=x onerror="window.__pwned=1">';
const ROOM = '<b id="boldroom">r</b><svg onload="window.__pwned=2">';
const TEXT = '<script>window.__pwned=3</script><a href="javascript:window.__pwned=4" id="evil">click</a>';
const SEED = '<iframe srcdoc="<script>parent.__pwned=5</script>"></iframe>';

test('markup in names, rooms and messages stays inert text', { timeout: 30000 }, async () => {
  const mallory = await h.openChat(browser, srv, { name: NAME, room: ROOM });
  const victim = await h.openChat(browser, srv, { name: 'victim', room: ROOM });
  const seed = await h.seedClient(srv, ROOM, '<i>seed</i>');

  await h.say(mallory.page, TEXT);
  seed.say(SEED);
  const msgs = await h.eventually(() => h.messages(victim.page), m => m.length === 2, { what: 'messages' });
  assert.deepEqual(msgs.map(m => [m.who, m.text]), [[NAME, TEXT], ['<i>seed</i>', SEED]]);
  await h.eventually(() => h.onlineNames(victim.page), n => n.length === 3, { what: 'everyone online' });
  assert.deepEqual((await h.onlineNames(victim.page)).sort(), ['<i>seed</i>', NAME, 'victim'].sort());
  assert.equal(await victim.page.locator('#room-title').textContent(), ROOM);
  assert.equal(await victim.page.locator('.room-btn .room-name').textContent(), ROOM);

  // Odd data from another client is shown as text and breaks nothing.
  const raw = await h.rawCentrifuge(srv);
  for (const data of [{ text: 'bad time', ts: 1e300, user: 42 }, '<b>a string</b>', [1, '<i>']]) {
    await raw.command('publish', { channel: ROOM, data });
  }
  raw.close();
  const odd = await h.eventually(() => h.messages(victim.page), m => m.length === 5, { what: 'odd data' });
  assert.deepEqual(odd.slice(2).map(m => [m.who, m.text]), [
    ['anonymous', 'bad time'], ['anonymous', '"<b>a string</b>"'], ['anonymous', '[1,"<i>"]'],
  ]);

  for (const who of [mallory, victim]) {
    const page = who.page;
    // No element came out of anyone's input...
    const injected = await page.locator('#chat img, #chat script, #chat svg, #chat b, #chat i, #chat a, #chat iframe').count();
    assert.equal(injected, 0, 'no element from user input');
    // ...and nothing ran.
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.deepEqual(who.problems, []);
  }
});
