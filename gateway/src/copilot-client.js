// relaymesh copilot client (seed 001), served by the gateway at
// /copilot-client.js as an ES module:
//
//   import { CopilotClient } from '/copilot-client.js';
//   const copilot = new CopilotClient({
//     url: 'wss://host/ws/copilot',
//     getToken: async () => auth.accessToken,          // sent as ?token=
//     refreshToken: async () => auth.refresh(),        // on close 4001; then getToken
//     onLogin: () => location.assign('/login'),        // on close 1008
//     handlers: {                                      // server callbacks
//       request_available_data: async (data) => listCachedData(data),
//       request_api: async (data) => callApi(data.api, data.params),
//       clarification_request: async (data) => prompt(data.question),
//     },
//   });
//   copilot.connect();
//   const answer = await copilot.query({ question: 'monthly cost?' });
//
// Behaviour: reconnects with exponential backoff (1, 2, 4 ... 30 s) and
// gives up after 10 failed tries in a row; a `connected` frame resets the
// count. Close 4001 refreshes the token and reconnects; 1008 (no token)
// calls onLogin and stops; 4004 (replaced by a newer tab) stops. Server
// `ping`s are answered with `pong`. Each callback is answered with the
// matching frame and the server's one-time requestId; a callback without
// a handler is left unanswered (the server's wait times out).

/** The answer frame for each server callback. */
export const CALLBACK_ANSWERS = Object.freeze({
  request_available_data: 'available_data',
  request_api: 'api_result',
  clarification_request: 'human_response',
});

/** Close codes of the relaymesh contract that change what the client does. */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  NO_TOKEN: 1008,
  TOKEN_INVALID: 4001,
  HEARTBEAT_LOST: 4003,
  REPLACED: 4004,
});

const DEFAULTS = Object.freeze({ initialDelayMs: 1000, maxDelayMs: 30000, maxAttempts: 10 });

/** The delay before retry number `attempt` (1-based): 1, 2, 4 ... capped. */
export function backoffDelay(attempt, initialDelayMs = DEFAULTS.initialDelayMs, maxDelayMs = DEFAULTS.maxDelayMs) {
  return Math.min(initialDelayMs * 2 ** Math.max(0, attempt - 1), maxDelayMs);
}

export class CopilotClient {
  /**
   * @param {object} o
   * @param {string} o.url            the /ws/copilot URL, without ?token=
   * @param {() => (string|Promise<string>)} o.getToken      the current token
   * @param {() => (void|Promise<void>)} [o.refreshToken] on 4001: make getToken return a fresh token
   * @param {() => void} [o.onLogin]  the user must log in again (1008, or refresh failed)
   * @param {Object<string, (data: any, frame: object) => any>} [o.handlers] callback handlers by frame type
   * @param {(frame: object) => void} [o.onFrame]  every frame from the server
   * @param {(state: string, detail: object) => void} [o.onState] connecting, open, closed, retrying, stopped
   * @param {{initialDelayMs?: number, maxDelayMs?: number, maxAttempts?: number}} [o.backoff]
   * @param {typeof WebSocket} [o.WebSocket] the WebSocket class (tests inject a fake)
   */
  constructor(o) {
    this.url = o.url;
    this.getToken = o.getToken;
    this.refreshToken = o.refreshToken;
    this.onLogin = o.onLogin || (() => {});
    this.handlers = { ...(o.handlers || {}) };
    this.onFrame = o.onFrame || (() => {});
    this.onState = o.onState || (() => {});
    this.backoff = { ...DEFAULTS, ...(o.backoff || {}) };
    this.WebSocket = o.WebSocket || globalThis.WebSocket;
    this.ws = null;
    this.failures = 0; // failed tries in a row
    this.stopped = true;
    this.timer = null;
    this.nextQuery = 1;
    this.pending = new Map(); // query requestId -> {resolve, reject}
    this.info = null; // the last `connected` frame
  }

  /** Registers (or replaces) the handler of one callback type. */
  handle(type, handler) {
    if (!(type in CALLBACK_ANSWERS)) throw new Error(`unknown callback type ${type}`);
    this.handlers[type] = handler;
  }

  /** Starts connecting (and reconnecting) until close() or a final close code. */
  connect() {
    this.stopped = false;
    this.failures = 0;
    this.open();
  }

  /** Closes for good: no reconnect. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(CLOSE.NORMAL, 'client closed');
    this.state('stopped', { reason: 'closed by the app' });
  }

  get connected() {
    return !!this.ws && this.ws.readyState === 1 && this.info !== null;
  }

  /**
   * Sends a query; resolves with the `response` frame's data (and the
   * frame), rejects with the `error` frame that ends it.
   */
  query(data) {
    if (!this.connected) return Promise.reject(new Error('not connected'));
    const requestId = `q${this.nextQuery++}`;
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, { resolve, reject });
      this.send({ type: 'query', requestId, data });
    });
  }

  send(frame) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(frame));
  }

  state(name, detail = {}) {
    try { this.onState(name, detail); } catch (e) { console.error('copilot onState', e); }
  }

  async open() {
    if (this.stopped) return;
    let token;
    try {
      token = await this.getToken();
    } catch (e) {
      token = null;
    }
    if (this.stopped) return;
    const sep = this.url.includes('?') ? '&' : '?';
    const url = token ? `${this.url}${sep}token=${encodeURIComponent(token)}` : this.url;
    this.state('connecting', { attempt: this.failures + 1 });
    const ws = new this.WebSocket(url);
    this.ws = ws;
    this.info = null;
    ws.onmessage = (e) => this.receive(ws, e.data);
    ws.onclose = (e) => this.closed(ws, e.code, e.reason);
  }

  receive(ws, text) {
    let f;
    try { f = JSON.parse(text); } catch (e) { return; }
    if (!f || typeof f !== 'object') return;
    if (f.type === 'connected') {
      this.info = f;
      this.failures = 0;
      this.state('open', f);
    } else if (f.type === 'ping') {
      this.send({ type: 'pong' });
    } else if (f.type in CALLBACK_ANSWERS) {
      this.answer(ws, f);
    } else if ((f.type === 'response' || f.type === 'error') && f.requestId && this.pending.has(f.requestId)) {
      const p = this.pending.get(f.requestId);
      this.pending.delete(f.requestId);
      if (f.type === 'response') p.resolve(f);
      else p.reject(Object.assign(new Error(`${f.code}: ${f.message}`), { frame: f }));
    }
    try { this.onFrame(f); } catch (e) { console.error('copilot onFrame', e); }
  }

  async answer(ws, f) {
    const handler = this.handlers[f.type];
    if (!handler) return; // unanswered: the server's wait times out
    let data;
    try {
      data = await handler(f.data, f);
    } catch (e) {
      console.error(`copilot ${f.type} handler failed`, e);
      return;
    }
    // The answer belongs to the socket that asked: a requestId is one-time
    // and bound to its connection.
    if (ws === this.ws && ws.readyState === 1) {
      ws.send(JSON.stringify({ type: CALLBACK_ANSWERS[f.type], requestId: f.requestId, data: data ?? null }));
    }
  }

  async closed(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.info = null;
    for (const p of this.pending.values()) p.reject(new Error(`connection closed (${code})`));
    this.pending.clear();
    this.state('closed', { code, reason });
    if (this.stopped) return;
    if (code === CLOSE.NO_TOKEN) {
      this.stopped = true;
      this.state('stopped', { code, reason: 'login required' });
      this.onLogin();
      return;
    }
    if (code === CLOSE.REPLACED) {
      this.stopped = true;
      this.state('stopped', { code, reason: 'replaced by a newer session' });
      return;
    }
    this.failures += 1;
    if (this.failures > this.backoff.maxAttempts) {
      this.stopped = true;
      this.state('stopped', { code, reason: `gave up after ${this.backoff.maxAttempts} tries` });
      return;
    }
    if (code === CLOSE.TOKEN_INVALID) {
      if (!this.refreshToken) {
        this.stopped = true;
        this.state('stopped', { code, reason: 'token refused and no refreshToken' });
        this.onLogin();
        return;
      }
      try {
        await this.refreshToken(); // getToken returns the fresh token from now on
      } catch (e) {
        this.stopped = true;
        this.state('stopped', { code, reason: 'token refresh failed' });
        this.onLogin();
        return;
      }
      // A refreshed token is tried at once; a second refusal backs off.
      if (this.failures === 1) { this.open(); return; }
    }
    const delay = backoffDelay(this.failures, this.backoff.initialDelayMs, this.backoff.maxDelayMs);
    this.state('retrying', { attempt: this.failures, delayMs: delay, code });
    this.timer = setTimeout(() => this.open(), delay);
  }
}
