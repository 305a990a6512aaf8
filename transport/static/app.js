// hubbub's chat page. Speaks the Centrifugo protocol to /connection/websocket
// on this page's origin through ./centrifuge-client.js.
//
// Channels, for a room R:
//   R         chat: publications {"text", "user", "ts"}; seed clients in room R
//             are members too (their lines arrive as {"text"} with info.user).
//   typing:R  signals, a namespace without history: {"kind":"typing"|"hello"|"here", "user"}.
//             Connections are anonymous until tokens exist, so browsers tell each
//             other their names there: a newcomer says "hello", the others answer "here".
//
// Every string from the network or the user reaches the page through
// textContent, never as HTML.

import { Client } from './centrifuge-client.js';

const PAGE = 30; // publications per history page
const KEEP = 1000; // messages kept in a room's log; older ones reload on scroll
const ANSWER_UP_TO = 100; // rooms bigger than this do not answer "hello" (see onSignal)
const TYPING_EVERY_MS = 2000; // at most one typing signal per room this often
const TYPING_SHOWN_MS = 4500; // a typing signal shows this long unless renewed
const NAME_MAX = 64;
const SIGNALS = 'typing:';

const $ = id => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

const ui = {
  conn: $('conn'), reconnect: $('reconnect'), signout: $('signout'),
  login: $('login'), loginForm: $('login-form'), loginName: $('login-name'),
  loginRoom: $('login-room'), loginToken: $('login-token'),
  chat: $('chat'), joinForm: $('join-form'), joinRoom: $('join-room'), roomList: $('room-list'),
  roomTitle: $('room-title'), leave: $('leave'), notice: $('notice'), logBox: $('log-box'),
  older: $('older'), typing: $('typing'), sendForm: $('send-form'), message: $('message'),
  online: $('online'), onlineTitle: $('online-title'),
};

let me = { name: '', token: '' };
let client = null;
const rooms = new Map(); // room name → Room
let active = null; // the Room shown

const cleanName = s => String(s).replace(/[\u0000-\u001f\u007f-\u009f]/g, '').trim().slice(0, NAME_MAX);
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

class Room {
  constructor(name) {
    this.name = name;
    this.log = el('ol', 'log');
    this.log.setAttribute('role', 'log');
    this.log.setAttribute('aria-live', 'polite');
    this.log.setAttribute('aria-label', `Messages in ${name}`);
    this.log.tabIndex = 0;
    this.log.hidden = true;
    this.log.addEventListener('scroll', () => {
      if (this.log.scrollTop < 60) loadOlder(this);
    });
    ui.logBox.append(this.log);
    this.button = el('button', 'room-btn');
    this.button.type = 'button';
    this.button.append(el('span', 'room-name', name), el('span', 'unread'));
    this.button.addEventListener('click', () => show(this));
    this.item = el('li');
    this.item.append(this.button);
    ui.roomList.append(this.item);
    this.reset();
    this.unread = 0;
    this.notice = '';
    this.members = new Map(); // client id → info.user ('' when anonymous)
    this.names = new Map(); // client id → name a browser announced
    this.typing = new Map(); // client id → {user, until}
    this.lastTypingSent = 0;
    this.hereTimer = null;
    this.signals = true;
    this.joined = false;
  }

  reset() {
    this.log.replaceChildren();
    this.seen = new Set(); // offsets shown
    this.oldest = 0; // lowest offset shown (0: none)
    this.epoch = '';
    this.hasMore = false;
    this.loading = false;
  }
}

// ---- connection state ---------------------------------------------------------

function onState(state, detail) {
  ui.conn.dataset.state = state;
  let text;
  if (state === 'connecting') {
    text = 'Connecting…';
  } else if (state === 'connected') {
    text = `Connected as ${me.name}`;
  } else if (state === 'reconnecting') {
    text = `Reconnecting in ${Math.ceil(detail.delay / 1000)} s… (${detail.reason}, code ${detail.code})`;
  } else {
    text = `Disconnected: ${detail.reason}${detail.code ? ` (code ${detail.code})` : ''}`;
  }
  ui.conn.textContent = text;
  ui.reconnect.hidden = state !== 'disconnected';
  if (state !== 'connected') {
    for (const room of rooms.values()) {
      room.members.clear();
      room.typing.clear();
      // Who left meanwhile is unknown; the others say their names again
      // when we say hello after the reconnect.
      room.names.clear();
    }
    renderOnline();
    renderTyping();
  }
}

function start(name, token, firstRoom) {
  me = { name, token };
  try {
    localStorage.setItem('hubbub.name', name);
  } catch (_) { /* storage may be off */ }
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  client = new Client(`${proto}//${location.host}/connection/websocket`, {
    name: 'hubbub-web', token: token || undefined, onState,
  });
  ui.login.hidden = true;
  ui.chat.hidden = false;
  ui.signout.hidden = false;
  client.connect();
  join(firstRoom);
}

// ---- rooms ------------------------------------------------------------------

function join(name) {
  name = name.trim();
  if (!name) return;
  let room = rooms.get(name);
  if (room) {
    show(room);
    return;
  }
  room = new Room(name);
  rooms.set(name, room);
  show(room);
  client.subscribe(name, {
    joinLeave: true,
    onSubscribed: r => onSubscribed(room, r),
    onPublication: pub => onChat(room, pub),
    onJoin: info => {
      room.members.set(info.client, info.user || '');
      if (room === active) renderOnline();
    },
    onLeave: info => {
      room.members.delete(info.client);
      room.names.delete(info.client);
      room.typing.delete(info.client);
      if (room === active) {
        renderOnline();
        renderTyping();
      }
    },
    onError: e => setNotice(room, `Could not join “${name}”: ${e.reason} (error ${e.code}).`),
  });
  client.subscribe(SIGNALS + name, {
    recoverable: false,
    onSubscribed: () => signal(room, 'hello'),
    onPublication: pub => onSignal(room, pub),
    onError: e => {
      room.signals = false;
      setNotice(room, `Typing indicators and the names of other browser users are off here: ` +
        `the server refused “${SIGNALS}${name}” (${e.reason}, error ${e.code}). ` +
        'Start it with a "typing" namespace (see README).');
    },
  });
}

function leave(room) {
  client.unsubscribe(room.name);
  client.unsubscribe(SIGNALS + room.name);
  rooms.delete(room.name);
  room.log.remove();
  room.item.remove();
  const next = rooms.values().next().value;
  if (next) {
    show(next);
  } else {
    active = null;
    ui.roomTitle.textContent = 'No room';
    ui.notice.textContent = 'Join a room to chat.';
    ui.older.hidden = true;
    renderOnline();
    renderTyping();
    ui.joinRoom.focus();
  }
}

function show(room) {
  if (active && active !== room) {
    active.atBottom = isAtBottom(active.log);
    active.log.hidden = true;
  }
  active = room;
  room.log.hidden = false;
  room.unread = 0;
  ui.roomTitle.textContent = room.name;
  ui.leave.setAttribute('aria-label', `Leave room ${room.name}`);
  ui.notice.textContent = room.notice;
  ui.older.hidden = !room.hasMore;
  if (room.atBottom !== false) scrollToBottom(room.log);
  if (room.hasMore && room.log.scrollHeight <= room.log.clientHeight) loadOlder(room);
  renderRooms();
  renderOnline();
  renderTyping();
}

function setNotice(room, text) {
  room.notice = text;
  if (room === active) ui.notice.textContent = text;
}

function renderRooms() {
  let total = 0;
  for (const room of rooms.values()) {
    const badge = room.button.querySelector('.unread');
    badge.textContent = room.unread ? String(room.unread) : '';
    total += room.unread;
    const label = room.unread ? `${room.name}, ${room.unread} unread` : room.name;
    room.button.setAttribute('aria-label', label);
    if (room === active) {
      room.button.setAttribute('aria-current', 'true');
    } else {
      room.button.removeAttribute('aria-current');
    }
  }
  document.title = total ? `(${total}) hubbub chat` : 'hubbub chat';
}

// ---- subscriptions, history, recovery -------------------------------------------

async function onSubscribed(room, r) {
  room.joined = true;
  refreshPresence(room);
  if (r.first) {
    room.reset();
    room.epoch = r.epoch;
    await loadInitial(room, r.offset);
  } else if (r.recovered) {
    for (const pub of r.publications) addPublication(room, pub, { live: true });
    const n = r.publications.length;
    setNotice(room, n === 0
      ? 'Reconnected: nothing was missed.'
      : `Reconnected: recovered ${n} missed message${n === 1 ? '' : 's'}.`);
    if (room === active) scrollToBottom(room.log);
  } else {
    setNotice(room, 'Reconnected, but the messages sent while you were away could not be ' +
      'recovered (the server restarted or no longer has them). History reloaded.');
    room.reset();
    room.epoch = r.epoch;
    await loadInitial(room, r.offset);
  }
}

async function loadInitial(room, top) {
  room.oldest = (top || 0) + 1;
  room.hasMore = !!top;
  await loadOlder(room);
  scrollToBottom(room.log);
}

/** Loads the page of publications before the oldest shown; keeps the view where it was. */
async function loadOlder(room) {
  if (room.loading || !room.hasMore || !room.epoch || client.state !== 'connected') return;
  if (room.oldest <= 1) {
    room.hasMore = false;
    if (room === active) ui.older.hidden = true;
    return;
  }
  room.loading = true;
  const log = room.log;
  try {
    const r = await client.history(room.name, {
      limit: PAGE, reverse: true, since: { offset: room.oldest, epoch: room.epoch },
    });
    const pubs = r.publications || [];
    const fromBottom = log.scrollHeight - log.scrollTop;
    for (const pub of pubs) addPublication(room, pub, { live: false });
    const lowest = pubs.reduce((m, p) => Math.min(m, p.offset || m), room.oldest);
    room.hasMore = pubs.length === PAGE && lowest > 1;
    room.oldest = lowest;
    log.scrollTop = log.scrollHeight - fromBottom;
  } catch (e) {
    if (e.code === 108) {
      room.hasMore = false; // this channel keeps no history
    } else if (e.code !== 0) {
      setNotice(room, `Could not load history: ${e.reason} (error ${e.code}).`);
      room.hasMore = false;
    }
  } finally {
    room.loading = false;
  }
  if (room === active) ui.older.hidden = !room.hasMore;
  // A log without a scroll bar cannot be scrolled up: fill it first.
  if (room.hasMore && log.scrollHeight <= log.clientHeight && !log.hidden) loadOlder(room);
}

// ---- chat ---------------------------------------------------------------------

function onChat(room, pub) {
  const atBottom = isAtBottom(room.log);
  const info = pub.info || {};
  room.typing.delete(info.client);
  if (room === active) renderTyping();
  const shown = addPublication(room, pub, { live: true });
  if (!shown) return;
  if (atBottom || room !== active) trim(room);
  if (room !== active) {
    if (info.client !== client.clientId) room.unread += 1;
    renderRooms();
  } else if (atBottom || info.client === client.clientId) {
    scrollToBottom(room.log);
  }
}

/** What a publication says, whoever sent it. */
function readPublication(room, pub, live) {
  const info = pub.info || {};
  const data = pub.data;
  let text;
  let user = '';
  let ts = 0;
  if (data !== null && typeof data === 'object' && typeof data.text === 'string') {
    text = data.text;
    if (typeof data.user === 'string') user = cleanName(data.user);
    // Any number may arrive; Date throws beyond ±8.64e15 ms.
    if (typeof data.ts === 'number' && Math.abs(data.ts) < 8.64e15) ts = data.ts;
  } else {
    text = JSON.stringify(data);
  }
  // A name the server vouches for (a seed client's username, a token's user) wins.
  if (info.user) user = info.user;
  if (user && info.client && !info.user) learnName(room, info.client, user);
  if (!ts && live) ts = Date.now();
  return { text, user: user || 'anonymous', ts, mine: !!info.client && info.client === client.clientId };
}

/** Adds a publication to the room's log in offset order; false if already shown. */
function addPublication(room, pub, { live }) {
  const offset = pub.offset || 0;
  if (offset) {
    if (room.seen.has(offset)) return false;
    room.seen.add(offset);
  }
  const m = readPublication(room, pub, live);
  const li = el('li', m.mine ? 'msg mine' : 'msg');
  if (offset) li.dataset.offset = String(offset);
  const head = el('div', 'msg-head');
  head.append(el('span', 'who', m.user));
  if (m.ts) {
    const d = new Date(m.ts);
    const t = el('time', 'when', timeFmt.format(d));
    t.dateTime = d.toISOString();
    t.title = d.toLocaleString();
    head.append(' ', t);
  }
  li.append(head, el('p', 'text', m.text));
  // Newest at the bottom: before the first message with a higher offset.
  let before = null;
  if (offset) {
    for (let n = room.log.lastElementChild; n; n = n.previousElementSibling) {
      const o = Number(n.dataset.offset || 0);
      if (o && o < offset) break;
      if (o > offset) before = n;
    }
  }
  room.log.insertBefore(li, before);
  return true;
}

/** Keeps a long-running room's log bounded: drops the oldest, which scrolling up reloads. */
function trim(room) {
  let extra = room.log.childElementCount - KEEP;
  if (extra <= 0) return;
  while (extra-- > 0 && room.log.firstElementChild) {
    const o = Number(room.log.firstElementChild.dataset.offset || 0);
    if (o) room.seen.delete(o);
    room.log.firstElementChild.remove();
  }
  const first = room.log.firstElementChild;
  const o = first ? Number(first.dataset.offset || 0) : 0;
  if (o > 1) {
    room.oldest = o;
    room.hasMore = true;
    if (room === active) ui.older.hidden = false;
  }
}

async function sendMessage() {
  const room = active;
  const text = ui.message.value;
  if (!room || !text.trim()) return;
  try {
    await client.publish(room.name, { text, user: me.name, ts: Date.now() });
    if (ui.message.value === text) ui.message.value = '';
    room.lastTypingSent = 0;
  } catch (e) {
    setNotice(room, `Not sent: ${e.reason}${e.code ? ` (error ${e.code})` : ''}. Your message is still in the box.`);
  }
}

// ---- presence -----------------------------------------------------------------

async function refreshPresence(room) {
  try {
    const p = await client.presence(room.name);
    room.members.clear();
    for (const [id, info] of Object.entries(p)) room.members.set(id, (info && info.user) || '');
  } catch (e) {
    if (e.code) setNotice(room, `Who is online is unknown: ${e.reason} (error ${e.code}).`);
  }
  if (room === active) renderOnline();
}

function renderOnline() {
  const room = active;
  const names = new Map(); // name → is it me
  let anonymous = 0;
  if (room && client && client.state === 'connected') {
    for (const [id, user] of room.members) {
      const name = user || (id === client.clientId ? me.name : room.names.get(id));
      if (name) {
        names.set(name, names.get(name) || id === client.clientId);
      } else {
        anonymous += 1;
      }
    }
  }
  const items = [...names.keys()].sort((a, b) => a.localeCompare(b)).map(name => {
    const li = el('li', 'user', name);
    if (names.get(name)) li.append(el('span', 'you', ' (you)'));
    return li;
  });
  if (anonymous) items.push(el('li', 'user anon', anonymous === 1 ? '1 anonymous' : `${anonymous} anonymous`));
  ui.online.replaceChildren(...items);
  const count = names.size + anonymous;
  ui.onlineTitle.textContent = room ? `Online (${count})` : 'Online';
}

// ---- signals: typing and names ----------------------------------------------------

function signal(room, kind) {
  if (!room.signals || client.state !== 'connected') return;
  client.publish(SIGNALS + room.name, { kind, user: me.name }).catch(() => {});
}

function onSignal(room, pub) {
  const info = pub.info || {};
  const data = pub.data;
  if (!info.client || info.client === client.clientId) return;
  if (data === null || typeof data !== 'object' || typeof data.user !== 'string') return;
  const user = info.user || cleanName(data.user);
  if (!user) return;
  learnName(room, info.client, user);
  if (data.kind === 'hello' && !room.hereTimer && room.members.size <= ANSWER_UP_TO) {
    // Answer newcomers, several at once with one message. Every member
    // answers, so a big room stops answering (its browser users then show
    // as anonymous until they speak): names belong in the server's
    // connection info, which needs tokens or a core change.
    room.hereTimer = setTimeout(() => {
      room.hereTimer = null;
      signal(room, 'here');
    }, 50 + Math.random() * 250);
  } else if (data.kind === 'typing') {
    room.typing.set(info.client, { user, until: Date.now() + TYPING_SHOWN_MS });
    setTimeout(() => expireTyping(room), TYPING_SHOWN_MS + 50);
    if (room === active) renderTyping();
  }
}

/** What an anonymous connection says its name is (shown in the online list). */
function learnName(room, clientId, name) {
  if (room.names.get(clientId) === name) return;
  room.names.set(clientId, name);
  if (room === active && room.members.has(clientId)) renderOnline();
}

function expireTyping(room) {
  const now = Date.now();
  for (const [id, t] of room.typing) {
    if (t.until <= now) room.typing.delete(id);
  }
  if (room === active) renderTyping();
}

function renderTyping() {
  const room = active;
  const users = room ? [...new Set([...room.typing.values()].map(t => t.user))] : [];
  let text = '';
  if (users.length === 1) text = `${users[0]} is typing…`;
  else if (users.length === 2) text = `${users[0]} and ${users[1]} are typing…`;
  else if (users.length > 2) text = 'Several people are typing…';
  ui.typing.textContent = text;
}

function onInput() {
  const room = active;
  if (!room || !ui.message.value.trim()) return;
  const now = Date.now();
  if (now - room.lastTypingSent < TYPING_EVERY_MS) return;
  room.lastTypingSent = now;
  signal(room, 'typing');
}

// ---- scrolling ------------------------------------------------------------------

function isAtBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}

function scrollToBottom(log) {
  log.scrollTop = log.scrollHeight;
}

// ---- wiring -------------------------------------------------------------------

ui.loginForm.addEventListener('submit', ev => {
  ev.preventDefault();
  const name = cleanName(ui.loginName.value);
  const room = ui.loginRoom.value.trim();
  if (!name) {
    ui.loginName.setCustomValidity('Pick a name.');
    ui.loginName.reportValidity();
    return;
  }
  if (!room) {
    ui.loginRoom.setCustomValidity('Name a room to join.');
    ui.loginRoom.reportValidity();
    return;
  }
  start(name, ui.loginToken.value.trim(), room);
  ui.message.focus();
});
ui.loginName.addEventListener('input', () => ui.loginName.setCustomValidity(''));
ui.loginRoom.addEventListener('input', () => ui.loginRoom.setCustomValidity(''));
ui.joinForm.addEventListener('submit', ev => {
  ev.preventDefault();
  join(ui.joinRoom.value);
  ui.joinRoom.value = '';
  ui.message.focus();
});
ui.sendForm.addEventListener('submit', ev => {
  ev.preventDefault();
  sendMessage();
});
ui.message.addEventListener('input', onInput);
ui.leave.addEventListener('click', () => {
  if (active) leave(active);
});
ui.older.addEventListener('click', () => {
  if (active) loadOlder(active);
});
ui.reconnect.addEventListener('click', () => client && client.connect());
// Back online: try now rather than when the back-off says.
window.addEventListener('online', () => {
  if (client && client.state === 'reconnecting') client.connect();
});
ui.signout.addEventListener('click', () => {
  if (client) client.disconnect();
  location.reload();
});

try {
  const saved = localStorage.getItem('hubbub.name');
  if (saved) ui.loginName.value = saved;
} catch (_) { /* storage may be off */ }
if (location.hash.length > 1) {
  try {
    ui.loginRoom.value = decodeURIComponent(location.hash.slice(1));
  } catch (_) { /* not a room name */ }
}
