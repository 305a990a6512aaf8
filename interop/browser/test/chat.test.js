'use strict';
// Two people in the browser: they chat, see each other online (once each,
// however many tabs), read the unread count of a room they are not looking
// at, and see each other typing until the signal expires. Takes the
// screenshot README shows (docs/chat.png).

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

test('two users chat and see each other online', { timeout: 60000 }, async () => {
  const alice = await h.openChat(browser, srv, { name: 'alice', room: 'lobby' });
  const bob = await h.openChat(browser, srv, { name: 'bob', room: 'lobby' });

  await h.eventually(() => h.onlineNames(alice.page), n => n.join() === 'alice,bob',
    { what: 'alice sees bob online' });
  await h.eventually(() => h.onlineNames(bob.page), n => n.join() === 'alice,bob',
    { what: 'bob sees alice online' });
  assert.match(await alice.page.locator('#online').innerText(), /alice \(you\)/);
  assert.match(await alice.page.locator('#conn').innerText(), /Connected as alice/);

  await h.say(alice.page, 'hi bob!');
  await h.say(bob.page, 'hello alice');
  for (const who of [alice, bob]) {
    const msgs = await h.eventually(() => h.messages(who.page), m => m.length === 2,
      { what: 'both messages' });
    assert.deepEqual(msgs.map(m => [m.who, m.text]), [['alice', 'hi bob!'], ['bob', 'hello alice']],
      'sender and text, newest at the bottom');
    for (const m of msgs) assert.match(m.time, /\d\d?:\d\d/, 'a time on each message');
  }
  // The box is cleared after sending.
  assert.equal(await h.messageBox(alice.page).inputValue(), '');

  // A second tab of bob's is still one "bob".
  const bob2 = await h.openChat(browser, srv, { name: 'bob', room: 'lobby' });
  await h.eventually(() => h.onlineNames(bob2.page), n => n.join() === 'alice,bob',
    { what: 'second tab sees alice and bob' });
  await h.eventually(() => alice.page.locator('#online-title').innerText(), t => t === 'Online (2)',
    { what: 'alice counts two people for three connections' });
  await h.eventually(() => h.onlineNames(alice.page), n => n.join() === 'alice,bob',
    { what: 'one entry per user' });

  // bob leaves entirely: alice sees it live.
  await bob.context.close();
  await bob2.context.close();
  await h.eventually(() => h.onlineNames(alice.page), n => n.join() === 'alice',
    { what: 'bob gone from alice\'s list' });

  assert.deepEqual(alice.problems, []);
  await alice.context.close();
});

test('several rooms at once, with an unread count on the others', { timeout: 60000 }, async () => {
  const carol = await h.openChat(browser, srv, { name: 'carol', room: 'kitchen', viewport: { width: 1024, height: 560 } });
  const dave = await h.openChat(browser, srv, { name: 'dave', room: 'kitchen' });
  // carol joins a second room with the keyboard only; it becomes the shown one.
  await carol.page.getByLabel('Join a room').focus();
  await carol.page.keyboard.type('garden');
  await carol.page.keyboard.press('Enter');
  await h.eventually(() => carol.page.locator('#room-title').innerText(), t => t === 'garden',
    { what: 'garden shown' });
  // Joining sends focus to the message box: typing goes straight to the room.
  await carol.page.keyboard.type('anyone in the garden?');
  await carol.page.keyboard.press('Enter');
  await h.eventually(() => h.messages(carol.page), m => m.length === 1 && m[0].text === 'anyone in the garden?',
    { what: 'keyboard-sent message' });

  await h.say(dave.page, 'one');
  await h.say(dave.page, 'two');
  const kitchen = carol.page.getByRole('button', { name: /^kitchen/ });
  await h.eventually(() => kitchen.getAttribute('aria-label'), l => l === 'kitchen, 2 unread',
    { what: 'unread count on kitchen' });
  assert.equal(await kitchen.locator('.unread').innerText(), '2');
  assert.equal(await carol.page.title(), '(2) hubbub chat');

  await kitchen.click();
  await h.eventually(() => h.messages(carol.page), m => m.map(x => x.text).join() === 'one,two',
    { what: 'kitchen messages' });
  assert.equal(await kitchen.getAttribute('aria-label'), 'kitchen', 'read now');
  assert.equal(await kitchen.getAttribute('aria-current'), 'true');

  // The screenshot README shows: a lively room, seen by carol.
  const erin = await h.seedClient(srv, 'garden', 'erin');
  erin.say('the tomatoes are ripe');
  await h.eventually(() => carol.page.getByRole('button', { name: /^garden/ }).getAttribute('aria-label'),
    l => l === 'garden, 1 unread', { what: 'unread count on garden' });
  await h.say(dave.page, 'the soup is ready');
  await h.say(carol.page, 'on my way!');
  await h.messageBox(dave.page).fill('bringing bread');
  await h.eventually(() => carol.page.locator('#typing').innerText(), t => t === 'dave is typing…',
    { what: 'typing shown for the screenshot' });
  await carol.page.screenshot({ path: h.screenshotPath('chat.png') });

  assert.deepEqual(carol.problems, []);
  assert.deepEqual(dave.problems, []);
  await carol.context.close();
  await dave.context.close();
});

test('"dave is typing…" shows, then goes away by itself', { timeout: 60000 }, async () => {
  const erin = await h.openChat(browser, srv, { name: 'erin', room: 'porch' });
  const frank = await h.openChat(browser, srv, { name: 'frank', room: 'porch' });
  // Let the page learn each other's names first.
  await h.eventually(() => h.onlineNames(erin.page), n => n.join() === 'erin,frank', { what: 'online' });

  const typing = erin.page.locator('#typing');
  assert.equal(await typing.innerText(), '');
  await h.messageBox(frank.page).pressSequentially('hel', { delay: 30 });
  await h.eventually(() => typing.innerText(), t => t === 'frank is typing…', { what: 'typing shown' });
  // frank's own page does not tell frank he is typing.
  assert.equal(await frank.page.locator('#typing').innerText(), '');
  const shownAt = Date.now();
  // No more keys: it expires by itself within a few seconds.
  await h.eventually(() => typing.innerText(), t => t === '', { timeoutMs: 8000, what: 'typing gone' });
  const lasted = Date.now() - shownAt;
  assert.ok(lasted > 2000, `shown long enough to read (${lasted} ms)`);

  // Sending the message clears it at once.
  await h.messageBox(frank.page).pressSequentially('lo', { delay: 30 });
  await h.eventually(() => typing.innerText(), t => t === 'frank is typing…', { what: 'typing again' });
  await h.messageBox(frank.page).press('Enter');
  await h.eventually(() => h.messages(erin.page), m => m.some(x => x.text === 'hello'), { what: 'message' });
  assert.equal(await typing.innerText(), '');

  assert.deepEqual(erin.problems, []);
  assert.deepEqual(frank.problems, []);
});
