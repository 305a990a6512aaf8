// hubbub's own small client for the Centrifugo client protocol (v2, JSON)
// over a browser WebSocket. Written for hubbub's chat page; see PROTOCOL.md.
//
// What it does:
// - connect: one `connect` command, then the subscriptions it holds;
// - commands are `{"id":N,"<method>":{...}}`, one per frame; replies (and
//   pushes) may come several to a frame, separated by "\n";
// - answers the server's pings `{}` with `{}`, and treats a server that
//   stays silent past its announced ping interval (+ a margin) as gone;
// - reconnects with capped, jittered exponential back-off, except after the
//   close codes that say reconnecting cannot help (3500-3999 "stop" codes,
//   1009), and re-subscribes, asking to recover from the last offset seen.
//
// It holds no chat logic: the page decides what publications mean.

const STOP_CODES = new Set([1009]);
const isStopCode = code => STOP_CODES.has(code) || (code >= 3500 && code < 4000) || (code >= 4500 && code < 5000);

const CLOSE_TEXT = {
  1000: 'closed',
  1001: 'going away',
  1006: 'connection lost',
  1009: 'message too big',
  3001: 'server shut down',
  3008: 'too slow',
  3012: 'no pong',
  3501: 'bad request',
  3502: 'stale',
  3508: 'not available',
};

/** Why a command failed: the server's error reply, or the connection's end. */
export class CommandError extends Error {
  constructor(code, message) {
    super(`${message} (${code})`);
    this.code = code;
    this.reason = message;
  }
}

/** One channel the client is in (or wants to be in). */
class Subscription {
  constructor(client, channel, options) {
    this.client = client;
    this.channel = channel;
    this.joinLeave = !!options.joinLeave;
    this.recoverable = options.recoverable !== false;
    this.handlers = options;
    this.epoch = '';
    this.offset = 0; // the highest offset seen (0: none yet)
    this.subscribed = false;
    this.wanted = true;
  }
}

export class Client {
  /**
   * @param {string} url ws(s)://host/connection/websocket
   * @param {{name?: string, token?: string, data?: any,
   *          onState?: (state: string, detail: object) => void}} options
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.state = 'disconnected';
    this.clientId = '';
    this.subs = new Map();
    this.pending = new Map();
    this.nextId = 1;
    this.ws = null;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.silenceTimer = null;
    this.pingInterval = 0;
  }

  // ---- connection ---------------------------------------------------------

  connect() {
    if (this.state === 'connected' || this.state === 'connecting') return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.setState('connecting', {});
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.onGone(1006, String(e && e.message || e));
      return;
    }
    this.ws = ws;
    ws.onopen = () => this.onOpen(ws);
    ws.onmessage = ev => {
      if (ws === this.ws) this.onFrame(ev.data);
    };
    ws.onclose = ev => {
      if (ws === this.ws) this.onGone(ev.code, ev.reason);
    };
  }

  /** Closes for good (no reconnect). */
  disconnect(reason = 'you disconnected') {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.failPending(new CommandError(0, 'disconnected'));
    this.resetSubs();
    this.setState('disconnected', { code: 1000, reason });
  }

  setState(state, detail) {
    this.state = state;
    if (this.options.onState) this.options.onState(state, detail);
  }

  async onOpen(ws) {
    if (ws !== this.ws) return;
    const connect = {};
    if (this.options.name) connect.name = this.options.name;
    if (this.options.token) connect.token = this.options.token;
    if (this.options.data !== undefined) connect.data = this.options.data;
    let reply;
    try {
      reply = await this.command('connect', connect, { beforeConnect: true });
    } catch (e) {
      // Lost connections are handled by onclose; a refusal is final.
      if (ws === this.ws && e.code !== 0) this.onGone(3500, `connect refused: ${e.reason}`);
      return;
    }
    if (ws !== this.ws) return;
    this.clientId = reply.client || '';
    this.pingInterval = (reply.ping || 0) * 1000;
    this.armSilence();
    const recovering = this.attempt > 0;
    this.attempt = 0;
    this.setState('connected', { client: this.clientId, recovering });
    for (const sub of this.subs.values()) {
      if (sub.wanted) this.sendSubscribe(sub);
    }
  }

  onGone(code, reason) {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try { ws.close(); } catch (_) { /* already closed */ }
    }
    clearTimeout(this.silenceTimer);
    this.failPending(new CommandError(0, 'connection closed'));
    this.resetSubs();
    const text = reason || CLOSE_TEXT[code] || `closed with code ${code}`;
    if (isStopCode(code)) {
      this.setState('disconnected', { code, reason: text });
      return;
    }
    const delay = this.backoff();
    this.attempt += 1;
    this.setState('reconnecting', { code, reason: text, delay });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delay);
  }

  /** 0.5 s, 1 s, 2 s … up to 10 s, each with up to half again of jitter. */
  backoff() {
    const base = Math.min(10000, 500 * 2 ** Math.min(this.attempt, 5));
    return Math.round(base * (1 + Math.random() * 0.5));
  }

  resetSubs() {
    for (const sub of this.subs.values()) sub.subscribed = false;
  }

  /** The server pings every `ping` seconds; silence well past that means it is gone. */
  armSilence() {
    clearTimeout(this.silenceTimer);
    if (!this.pingInterval) return;
    const ws = this.ws;
    this.silenceTimer = setTimeout(() => {
      if (ws === this.ws) this.onGone(3012, 'no ping from the server');
    }, this.pingInterval + 10000);
  }

  // ---- frames ---------------------------------------------------------------

  onFrame(data) {
    if (typeof data !== 'string') return;
    this.armSilence();
    for (const line of data.split('\n')) {
      if (line === '') continue;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch (_) {
        continue;
      }
      if (msg === null || typeof msg !== 'object') continue;
      if (msg.id) {
        this.onReply(msg);
      } else if (msg.push) {
        this.onPush(msg.push);
      } else if (Object.keys(msg).length === 0) {
        this.send({}); // ping → pong
      }
    }
  }

  onReply(msg) {
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    clearTimeout(p.timer);
    if (msg.error) {
      p.reject(new CommandError(msg.error.code, msg.error.message || 'error'));
    } else {
      const result = msg[p.method] || {};
      // Before the next line of the frame: a subscribe reply's pushes may follow in it.
      if (p.onResult) {
        try {
          p.onResult(result);
        } catch (e) {
          console.error('subscribe handler failed', e);
        }
      }
      p.resolve(result);
    }
  }

  onPush(push) {
    const sub = this.subs.get(push.channel);
    if (!sub || !sub.subscribed) return;
    const h = sub.handlers;
    if (push.pub) {
      const pub = push.pub;
      if (pub.offset) sub.offset = Math.max(sub.offset, pub.offset);
      if (h.onPublication) h.onPublication(pub);
    } else if (push.join) {
      if (h.onJoin) h.onJoin(push.join.info || {});
    } else if (push.leave) {
      if (h.onLeave) h.onLeave(push.leave.info || {});
    } else if (push.unsubscribe) {
      sub.subscribed = false;
      sub.wanted = false;
      this.subs.delete(sub.channel);
      if (h.onError) h.onError(new CommandError(0, 'unsubscribed by the server'));
    }
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  /** Sends one command; resolves with its result, rejects with a CommandError. */
  command(method, params, { beforeConnect = false, timeoutMs = 10000, onResult } = {}) {
    if (!beforeConnect && this.state !== 'connected') {
      return Promise.reject(new CommandError(0, 'not connected'));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CommandError(0, 'timed out'));
      }, timeoutMs);
      this.pending.set(id, { method, resolve, reject, timer, onResult });
      if (!this.send({ id, [method]: params })) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(new CommandError(0, 'not connected'));
      }
    });
  }

  failPending(err) {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
  }

  // ---- subscriptions --------------------------------------------------------

  /**
   * Joins `channel` now and after every reconnect. Handlers:
   * onSubscribed({first, recovered, wasRecovering, publications, epoch, offset}),
   * onPublication(pub), onJoin(info), onLeave(info), onError(CommandError).
   */
  subscribe(channel, options) {
    let sub = this.subs.get(channel);
    if (sub) return sub;
    sub = new Subscription(this, channel, options);
    this.subs.set(channel, sub);
    if (this.state === 'connected') this.sendSubscribe(sub);
    return sub;
  }

  async sendSubscribe(sub) {
    const params = { channel: sub.channel };
    if (sub.joinLeave) params.join_leave = true;
    const recovering = sub.recoverable && sub.epoch !== '';
    if (sub.recoverable) params.recoverable = true;
    if (recovering) {
      params.recover = true;
      params.epoch = sub.epoch;
      params.offset = sub.offset;
    }
    try {
      await this.command('subscribe', params, { onResult: reply => this.onSubscribed(sub, reply, recovering) });
    } catch (e) {
      if (!sub.wanted) return;
      if (e.code === 0) return; // the connection went; a reconnect retries
      this.subs.delete(sub.channel);
      if (sub.handlers.onError) sub.handlers.onError(e);
    }
  }

  /** A subscribe reply, handled before any push that follows it. */
  onSubscribed(sub, reply, recovering) {
    if (!sub.wanted) return;
    const publications = reply.publications || [];
    const recovered = !!reply.recovered;
    if (!recovered) {
      sub.offset = reply.offset || 0;
    }
    for (const pub of publications) {
      if (pub.offset) sub.offset = Math.max(sub.offset, pub.offset);
    }
    const first = sub.epoch === '' && !recovering;
    sub.epoch = reply.epoch || sub.epoch;
    sub.subscribed = true;
    if (sub.handlers.onSubscribed) {
      sub.handlers.onSubscribed({
        first,
        wasRecovering: !!reply.was_recovering,
        recovered,
        publications,
        epoch: sub.epoch,
        offset: recovered ? sub.offset : reply.offset || 0,
      });
    }
  }

  unsubscribe(channel) {
    const sub = this.subs.get(channel);
    if (!sub) return;
    sub.wanted = false;
    this.subs.delete(channel);
    if (this.state === 'connected') {
      this.command('unsubscribe', { channel }).catch(() => {});
    }
  }

  publish(channel, data) {
    return this.command('publish', { channel, data });
  }

  presence(channel) {
    return this.command('presence', { channel }).then(r => r.presence || {});
  }

  /** history: {limit, since: {offset, epoch}, reverse} as the protocol has them. */
  history(channel, { limit, since, reverse } = {}) {
    const params = { channel };
    if (limit !== undefined) params.limit = limit;
    if (since) params.since = since;
    if (reverse) params.reverse = true;
    return this.command('history', params);
  }
}
