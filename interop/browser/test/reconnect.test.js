'use strict';
// The connection state is always shown; after a reconnect the page recovers
// what it missed and says so, or says plainly that it could not and reloads
// the history. The server is restarted for real (SIGTERM, a new process on
// the same port) while another client publishes: with the durable store the
// page recovers; with `--store memory` it says it could not and reloads.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let browser;

before(async () => {
  browser = await h.launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  await h.stopAll();
});

const conn = page => page.locator('#conn');
const state = page => conn(page).getAttribute('data-state');

test('server restart: the page reconnects and shows what was published meanwhile', { timeout: 60000 }, async () => {
  const port = await h.freePort();
  const first = await h.startServer({ port });
  const { page, problems } = await h.openChat(browser, first, { name: 'rita', room: 'survivors' });
  await h.say(page, 'before the restart');
  await h.eventually(() => h.messages(page), m => m.length === 1, { what: 'sent' });

  await h.stopServer(first, { signal: 'SIGTERM' });
  // Shown at once, with the reason: the server said it was shutting down.
  await h.eventually(() => state(page), s => s === 'reconnecting', { what: 'reconnecting shown' });
  assert.match(await conn(page).innerText(), /^Reconnecting in \d+ s… \(shutdown, code 3001\)$/);

  // A little while with no server: attempts fail, the page keeps trying.
  await h.sleep(1500);
  assert.equal(await state(page), 'reconnecting');
  const second = await h.startServer({ port });
  const other = await h.rawCentrifuge(second);
  await other.command('subscribe', { channel: 'survivors' });
  await other.command('publish', {
    channel: 'survivors', data: { text: 'published while you were away', user: 'sid', ts: Date.now() },
  });

  await h.waitConnected(page, 20000);
  assert.equal(await conn(page).innerText(), 'Connected as rita');
  const msgs = await h.eventually(() => h.messages(page),
    m => m.some(x => x.text === 'published while you were away'), { what: 'missed message shown' });
  assert.equal(msgs.at(-1).who, 'sid');
  // The history is durable (the store outlives the process): the page
  // recovers what it missed, or (when it was back before the publication)
  // has nothing to recover and gets it live. Never "could not recover".
  const notice = await page.locator('#notice').innerText();
  assert.ok(/recovered 1 missed message/.test(notice) || /nothing was missed/.test(notice), notice);
  // The line from before the restart is still there, once.
  const texts = (await h.messages(page)).map(m => m.text);
  assert.deepEqual(texts.filter(t => t === 'before the restart'), ['before the restart']);
  // Chat works on the new server.
  await h.say(page, 'back again');
  await other.waitFor(m => m.push && m.push.pub && m.push.pub.data.text === 'back again', 'page publishes again');
  other.close();
  // Chromium logs failed WebSocket attempts while the server is down; nothing else.
  assert.deepEqual(problems.filter(p => !/WebSocket connection to .* failed/.test(p)), []);
});

test('a dropped connection recovers exactly what it missed, and says so', { timeout: 60000 }, async () => {
  const srv = await h.startServer();
  const context = await browser.newContext();
  // Test instrumentation only: keep a handle on the page's sockets to drop one.
  await context.addInitScript(() => {
    const Native = window.WebSocket;
    window.__sockets = [];
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        window.__sockets.push(this);
      }
    };
  });
  const page = await context.newPage();
  await page.goto(`${srv.base}/`);
  await page.getByLabel('Your name').fill('tess');
  await page.getByLabel('Room', { exact: true }).fill('tunnel');
  await page.getByRole('button', { name: 'Join' }).click();
  await h.waitConnected(page);
  const other = await h.rawCentrifuge(srv);
  await other.command('subscribe', { channel: 'tunnel' });
  await other.command('publish', { channel: 'tunnel', data: { text: 'seen live', user: 'uma' } });
  await h.eventually(() => h.messages(page), m => m.length === 1, { what: 'live message' });
  const ugo = await h.openChat(browser, srv, { name: 'ugo', room: 'tunnel' });
  await h.eventually(() => h.onlineNames(page), n => n.join() === 'tess,ugo,uma', { what: 'online before' });

  await page.evaluate(() => window.__sockets.at(-1).close());
  await h.eventually(() => state(page), s => s === 'reconnecting', { what: 'reconnecting' });
  for (const text of ['missed one', 'missed two']) {
    await other.command('publish', { channel: 'tunnel', data: { text, user: 'uma' } });
  }
  await h.waitConnected(page);
  const msgs = await h.eventually(() => h.messages(page), m => m.length === 3, { what: 'recovered' });
  assert.deepEqual(msgs.map(m => m.text), ['seen live', 'missed one', 'missed two']);
  assert.equal(await page.locator('#notice').innerText(), 'Reconnected: recovered 2 missed messages.');
  // Who is online is read again, names included; ugo sees tess's new connection once.
  await h.eventually(() => h.onlineNames(page), n => n.join() === 'tess,ugo,uma', { what: 'online after' });
  await h.eventually(() => h.onlineNames(ugo.page), n => n.join() === 'tess,ugo,uma', { what: 'ugo\'s list' });
  assert.deepEqual(ugo.problems, []);
  other.close();
  await context.close();
});

test('a refusal the page cannot fix is shown as disconnected, with the reason', { timeout: 30000 }, async () => {
  const srv = await h.startServer({ args: ['--max-command-bytes', '512'] });
  const { page, problems } = await h.openChat(browser, srv, { name: 'vic', room: 'small' });
  // A message over the server's frame limit: it closes with 1009, which
  // reconnecting cannot help.
  await h.say(page, 'y'.repeat(600));
  await h.eventually(() => state(page), s => s === 'disconnected', { what: 'disconnected' });
  assert.match(await conn(page).innerText(), /^Disconnected: .*\(code 1009\)$/);
  await page.getByRole('button', { name: 'Reconnect' }).click();
  await h.waitConnected(page);
  await h.say(page, 'short');
  await h.eventually(() => h.messages(page), m => m.some(x => x.text === 'short'), { what: 'chat again' });
  assert.deepEqual(problems, []);
});

test('a restart that lost the history: the page says it could not recover and reloads', { timeout: 60000 }, async () => {
  // `--store memory`: a new process starts every stream again (a new epoch).
  const port = await h.freePort();
  const args = ['--store', 'memory'];
  const first = await h.startServer({ port, args });
  const { page, problems } = await h.openChat(browser, first, { name: 'tess', room: 'forgetful' });
  await h.say(page, 'soon forgotten');
  await h.eventually(() => h.messages(page), m => m.length === 1, { what: 'sent' });
  await h.stopServer(first, { signal: 'SIGTERM' });
  await h.eventually(() => state(page), s => s === 'reconnecting', { what: 'reconnecting shown' });
  const second = await h.startServer({ port, args });
  await h.waitConnected(page, 20000);
  const notice = await h.eventually(() => page.locator('#notice').innerText(),
    t => /could not be recovered.*History reloaded\./.test(t), { what: 'could not recover notice' });
  assert.ok(notice.length > 0);
  // The page still chats on the new server.
  const other = await h.rawCentrifuge(second);
  await other.command('subscribe', { channel: 'forgetful' });
  await h.say(page, 'hello again');
  await other.waitFor(m => m.push && m.push.pub && m.push.pub.data.text === 'hello again', 'page publishes again');
  other.close();
  assert.deepEqual(problems.filter(p => !/WebSocket connection to .* failed/.test(p)), []);
});
