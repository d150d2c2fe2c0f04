// @ts-check
/**
 * @file The browser's signaling client: login at central, the WebSocket to the assigned signal
 * node, automatic reconnect through central that resumes the session (numbered frames,
 * batched acks, duplicates dropped), typed ROAP events and send helpers, Ping keepalive, and
 * plain-words text for every error type.
 *
 * Contract: /work/shared/CONTRACT.md sections 2 (login), 3 (WebSocket protocol), 5 (sessions)
 * and 9 (ICE servers: every login answer carries fresh STUN/TURN servers, kept in
 * `client.iceServers`).
 */

/**
 * @typedef {object} Endpoint  central's answer to `GET /v1/endpoint`
 * @property {string} node       the node id, e.g. "node-1"
 * @property {string} url        the node's WebSocket URL, e.g. "ws://127.0.0.1:8091/ws"
 * @property {string} token      the ticket to present to that node
 * @property {number} expiresIn  seconds the ticket stays valid
 * @property {RTCIceServer[]} iceServers  STUN/TURN servers for RTCPeerConnection (TURN with a
 *   short-lived username/credential); empty when central has none configured
 */

/**
 * @typedef {'NOMATCH'|'TIMEOUT'|'REFUSED'|'CONFLICT'|'DOUBLECONFLICT'|'FAILED'|'OFFLINE'|
 *   'BADMESSAGE'|'FORBIDDEN'|'TOOLARGE'|'RATELIMITED'|'UNAVAILABLE'} ErrorType
 */

/**
 * @typedef {{candidate:string, sdpMid?:string|null, sdpMLineIndex?:number|null,
 *   usernameFragment?:string|null}} IceCandidateInit
 */

/**
 * A ROAP message as on the wire. `from` is filled in by the node on everything relayed.
 * @typedef {{type:'Offer', to:string, from?:string, sessionID:string, sdp:string, seq?:number, tieBreaker?:number}
 *   | {type:'Answer', to:string, from?:string, sessionID:string, sdp:string, seq?:number}
 *   | {type:'Ok', to:string, from?:string, sessionID:string, seq?:number}
 *   | {type:'Candidate', to:string, from?:string, sessionID:string, candidate:IceCandidateInit|null, seq?:number}
 *   | {type:'Shutdown', to:string, from?:string, sessionID:string, seq?:number}
 *   | {type:'Error', to:string, from?:string, sessionID?:string, errorType:ErrorType, description?:string, origin?:string, seq?:number}
 *   | {type:'Welcome', user:string, node:string, session?:string, resumed?:boolean, resumeWindowMs?:number}
 *   | {type:'Ping'} | {type:'Pong'}} RoapMessage
 */

/**
 * The node's first frame on a connection.
 * @typedef {{type:'Welcome', user:string, node:string, session?:string, resumed?:boolean, resumeWindowMs?:number}} Welcome
 */

/** Close codes of the contract. */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  TOO_LARGE: 1009,
  DRAINING: 1012,
  TRY_AGAIN_LATER: 1013,
  REPLACED: 4409,
  /** the application (its backend) disconnected this user: never reconnect */
  APP_DISCONNECT: 4403,
  /** used by this client when the server stops answering Pings */
  KEEPALIVE: 4000,
});

/** Error types a node sends itself (with `origin: "server"`). */
export const SERVER_ERROR_TYPES = Object.freeze(['OFFLINE', 'BADMESSAGE', 'FORBIDDEN', 'TOOLARGE', 'RATELIMITED', 'UNAVAILABLE']);
/** Error types peers send each other (ROAP). */
export const PEER_ERROR_TYPES = Object.freeze(['NOMATCH', 'TIMEOUT', 'REFUSED', 'CONFLICT', 'DOUBLECONFLICT', 'FAILED']);

/**
 * Plain-words text for an error, for people rather than logs.
 * @param {string} errorType
 * @param {{peer?:string, description?:string}} [ctx]
 * @returns {string}
 */
export function describeError(errorType, ctx = {}) {
  const who = ctx.peer || 'The other person';
  const whose = ctx.peer ? `${ctx.peer}'s` : "the other person's";
  switch (errorType) {
    case 'OFFLINE':
      return `${who} is not online right now.`;
    case 'UNAVAILABLE':
      return `Could not reach ${whose} server just now. Please try again in a moment.`;
    case 'BADMESSAGE':
      return `The server could not understand a message from this app${ctx.description ? ` (${ctx.description})` : ''}.`;
    case 'FORBIDDEN':
      return 'The server refused a message that claimed to come from someone else.';
    case 'TOOLARGE':
      return 'A message was too large for the server to pass on.';
    case 'RATELIMITED':
      return 'Too many messages too quickly. Please slow down and try again.';
    case 'NOMATCH':
      return `${who} could not use the connection offer (no common way to connect).`;
    case 'TIMEOUT':
      return `${who} did not answer in time.`;
    case 'REFUSED':
      return `${who} declined the call.`;
    case 'CONFLICT':
      return `You and ${ctx.peer || 'the other person'} called each other at the same moment; one call goes ahead.`;
    case 'DOUBLECONFLICT':
      return `You and ${ctx.peer || 'the other person'} called each other at the same moment again; retrying.`;
    case 'FAILED':
      return `${whose.charAt(0).toUpperCase()}${whose.slice(1)} side could not set up the connection.`;
    default:
      return `Something went wrong (${errorType}).`;
  }
}

/** Login or connection failure with an HTTP status where there was one. */
export class SignalError extends Error {
  /** @param {string} message @param {{status?:number, fatal?:boolean}} [opts] */
  constructor(message, opts = {}) {
    super(message);
    this.name = 'SignalError';
    this.status = opts.status;
    /** true when retrying cannot help (bad user id, bad JWT) */
    this.fatal = opts.fatal ?? false;
  }
}

/**
 * The usable entries of a login answer's `iceServers` (contract section 9): objects whose
 * `urls` is a string or an array of strings, with `username` / `credential` kept when they are
 * strings. Anything else (absent, malformed) gives fewer entries, never an exception, so a
 * central without ICE servers or with a newer format still lets the user sign in.
 * @param {unknown} value
 * @returns {RTCIceServer[]}
 */
export function parseIceServers(value) {
  if (!Array.isArray(value)) return [];
  /** @type {RTCIceServer[]} */
  const out = [];
  for (const s of value) {
    if (!s || typeof s !== 'object') continue;
    const raw = /** @type {any} */ (s).urls;
    const urls = (typeof raw === 'string' ? [raw] : Array.isArray(raw) ? raw : []).filter((u) => typeof u === 'string' && u !== '');
    if (urls.length === 0) continue;
    /** @type {RTCIceServer} */
    const server = { urls };
    const { username, credential } = /** @type {any} */ (s);
    if (typeof username === 'string') server.username = username;
    if (typeof credential === 'string') server.credential = credential;
    out.push(server);
  }
  return out;
}

/**
 * Asks central for a signaling endpoint (contract section 2).
 * @param {string} centralUrl  e.g. "http://127.0.0.1:8080" (`location.origin` in the demo)
 * @param {string} user
 * @param {{bearer?:string, fetch?:typeof fetch, signal?:AbortSignal}} [opts]
 * @returns {Promise<Endpoint & {connectUrl:string}>} `connectUrl` is `url?token=...`
 */
export async function login(centralUrl, user, opts = {}) {
  const doFetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
  const u = new URL('/v1/endpoint', centralUrl);
  u.searchParams.set('user', user);
  /** @type {Record<string,string>} */
  const headers = { accept: 'application/json' };
  if (opts.bearer) headers.authorization = `Bearer ${opts.bearer}`;
  let res;
  try {
    res = await doFetch(u, { headers, signal: opts.signal, cache: 'no-store' });
  } catch (e) {
    throw new SignalError(`Cannot reach the login service at ${u.origin} (${e instanceof Error ? e.message : e}).`);
  }
  /** @type {any} */
  let body = null;
  try {
    body = await res.json();
  } catch {
    // handled below
  }
  if (!res.ok) {
    const why = body && typeof body.error === 'string' ? body.error : `HTTP ${res.status}`;
    const fatal = res.status === 400 || res.status === 401 || res.status === 403;
    const text =
      res.status === 503
        ? `No signaling server is available right now (${why}).`
        : res.status === 401
          ? `Login refused: ${why}.`
          : `Login failed: ${why}.`;
    throw new SignalError(text, { status: res.status, fatal });
  }
  if (!body || typeof body.url !== 'string' || typeof body.token !== 'string' || typeof body.node !== 'string') {
    throw new SignalError('The login service sent an answer this app does not understand.', { status: res.status });
  }
  const connect = new URL(body.url);
  connect.searchParams.set('token', body.token);
  return {
    node: body.node,
    url: body.url,
    token: body.token,
    expiresIn: Number(body.expiresIn) || 0,
    iceServers: parseIceServers(body.iceServers),
    connectUrl: connect.toString(),
  };
}

/**
 * The URL that resumes `session` on the endpoint central handed out (contract section 5):
 * `connectUrl` (which carries the fresh ticket) plus `resume=<session>&last=<last>`.
 * Without a session it is `connectUrl` unchanged (a new session).
 * @param {string} connectUrl  e.g. "ws://host:port/ws?token=..."
 * @param {string | null | undefined} session  the token from the last Welcome
 * @param {number} last  the highest frame number received
 * @returns {string}
 */
export function resumeUrl(connectUrl, session, last) {
  if (!session) return connectUrl;
  const u = new URL(connectUrl);
  u.searchParams.set('resume', session);
  u.searchParams.set('last', String(Math.max(0, Math.floor(last))));
  return u.toString();
}

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential, capped, with "equal jitter"
 * (half fixed, half random) so that the clients of a drained node do not come back in step.
 * @param {number} attempt
 * @param {{baseMs?:number, maxMs?:number, random?:() => number}} [opts]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, opts = {}) {
  const base = opts.baseMs ?? 250;
  const max = opts.maxMs ?? 15000;
  const random = opts.random ?? Math.random;
  const cap = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return cap / 2 + random() * (cap / 2);
}

/** Close codes after which the client goes back to central for a new endpoint (and resumes). */
export function shouldReconnect(/** @type {number} */ code) {
  return code !== CLOSE.NORMAL && code !== CLOSE.REPLACED && code !== CLOSE.APP_DISCONNECT;
}

/**
 * Event carrying one ROAP message (`message`) — dispatched under the message's type name
 * (`Offer`, `Answer`, `Ok`, `Candidate`, `Shutdown`, `Error`, `Welcome`, `Pong`) and as
 * `message`; server errors also as `servererror`.
 */
export class SignalEvent extends Event {
  /**
   * @param {string} type
   * @param {RoapMessage} message
   * @param {string} [text] plain-words text (errors)
   */
  constructor(type, message, text) {
    super(type);
    this.message = message;
    this.text = text;
  }
}

/**
 * @typedef {'idle'|'connecting'|'open'|'reconnecting'|'replaced'|'disconnected'|'closed'} ClientState
 */

/**
 * The signaling connection. Events:
 * - one per ROAP type (`Offer`, ..., `Welcome`, `Pong`) and `message`: `SignalEvent`
 * - `servererror`: an Error with `origin:"server"` (`SignalEvent`, `.text` in plain words)
 * - `state`: CustomEvent `{state, node?, code?, reason?, retryInMs?}`
 * - `replaced`: this user logged in elsewhere (close 4409); no reconnect
 * - `disconnected`: CustomEvent `{code, reason, text}`: the application disconnected this user
 *   (close 4403); no reconnect
 * - `reconnected`: CustomEvent `{node, resumed}` after a reconnect's Welcome
 * - `sessionreset`: CustomEvent `{node, previous}` when a resume was refused (Welcome
 *   `resumed:false`): frames may have been lost and the page must subscribe and join again
 *
 * Sessions (contract section 5): the client tracks the highest frame number `n` received
 * (`lastN`), drops every frame numbered at or below it (so a replay never reaches the app
 * twice), acks cumulatively (`{"type":"Ack","n"}`) at most every `ackIntervalMs` or after
 * `ackEvery` frames, whichever comes first, and at once when the page is hidden, and on every
 * reconnect presents `resume=<session>&last=<lastN>` with the fresh ticket. `resumed` says
 * whether the current connection continues the previous session.
 *
 * `iceServers` holds the STUN/TURN servers of the latest login (refreshed on every login, so
 * TURN credentials are renewed on each reconnect); peer connections read it when they start.
 */
export class SignalClient extends EventTarget {
  /**
   * @param {{central:string, user:string, bearer?:string, WebSocket?:typeof WebSocket,
   *   fetch?:typeof fetch, pingIntervalMs?:number, pingTimeoutMs?:number, baseBackoffMs?:number,
   *   maxBackoffMs?:number, maxQueue?:number, ackIntervalMs?:number, ackEvery?:number}} opts
   */
  constructor(opts) {
    super();
    this.central = opts.central;
    this.user = opts.user;
    this.bearer = opts.bearer;
    this.WS = opts.WebSocket ?? globalThis.WebSocket;
    this.fetchImpl = opts.fetch;
    this.pingIntervalMs = opts.pingIntervalMs ?? 15000;
    this.pingTimeoutMs = opts.pingTimeoutMs ?? 10000;
    this.baseBackoffMs = opts.baseBackoffMs ?? 250;
    this.maxBackoffMs = opts.maxBackoffMs ?? 15000;
    this.maxQueue = opts.maxQueue ?? 256;
    /** longest an unacknowledged frame waits for its Ack */
    this.ackIntervalMs = opts.ackIntervalMs ?? 100;
    /** frames after which an Ack goes out at once */
    this.ackEvery = Math.max(1, opts.ackEvery ?? 32);
    /** @type {string | null} the session token of the last Welcome (null: none yet, or ended) */
    this.session = null;
    /** whether the current (or last) connection resumed the previous session */
    this.resumed = false;
    /** the node's resume window (ms) from the last Welcome */
    this.resumeWindowMs = 0;
    /** highest frame number received in this session */
    this.lastN = 0;
    /** highest frame number acknowledged to the node */
    this.ackedN = 0;
    /** frames dropped because their number was not above `lastN` (duplicates after a resume) */
    this.duplicates = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.ackTimer = undefined;
    /** @type {WebSocket | null} a socket given up by the keepalive, closed once a new one is welcomed */
    this.stale = null;
    /** @type {ClientState} */
    this.state = 'idle';
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {(Endpoint & {connectUrl:string}) | null} */
    this.endpoint = null;
    /** node id from the last Welcome */
    this.node = '';
    this.attempt = 0;
    /** @type {string[]} frames sent while (re)connecting, flushed after Welcome */
    this.queue = [];
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.retryTimer = undefined;
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.pingTimer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.pongTimer = undefined;
    this.everConnected = false;
    /** @type {{resolve:(w:{type:'Welcome', user:string, node:string})=>void, reject:(e:Error)=>void} | undefined} */
    this.firstConnect = undefined;
    /** identity of the attempt in flight (a newer attempt or close() makes older ones stale) */
    this.current = {};
    this.onOnline = () => {
      if (this.state === 'reconnecting' && this.retryTimer !== undefined) {
        clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
        void this.#attempt();
      }
    };
    /** Acks what arrived when the page is hidden or left (it may never run a timer again). */
    this.onHide = (/** @type {Event} */ ev) => {
      if (ev.type === 'pagehide' || typeof document === 'undefined' || document.visibilityState === 'hidden') this.#flushAck();
    };
    if (typeof globalThis.addEventListener === 'function') {
      globalThis.addEventListener('online', this.onOnline);
      globalThis.addEventListener('pagehide', this.onHide);
    }
    if (typeof document !== 'undefined') document.addEventListener('visibilitychange', this.onHide);
  }

  /**
   * Logs in at central and connects. Resolves with the Welcome; rejects with a SignalError if
   * this first attempt fails (later losses reconnect by themselves). Always starts a new session.
   * @returns {Promise<Welcome>}
   */
  connect() {
    if (this.state !== 'idle' && this.state !== 'closed' && this.state !== 'replaced' && this.state !== 'disconnected') {
      return Promise.reject(new SignalError(`already ${this.state}`));
    }
    this.everConnected = false;
    this.attempt = 0;
    this.#endSession();
    this.#setState('connecting');
    return new Promise((resolve, reject) => {
      this.firstConnect = { resolve, reject };
      void this.#attempt();
    });
  }

  /**
   * Closes for good (no reconnect), e.g. on logout: a normal close (1000), which ends the
   * session on the node (the user goes offline at once instead of after the resume window).
   */
  close() {
    this.#clearTimers();
    this.current = {};
    this.#failFirst(new SignalError('closed'));
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      try {
        ws.close(CLOSE.NORMAL, 'bye');
      } catch {
        // already closed
      }
    }
    this.#closeStale();
    this.#endSession();
    this.queue = [];
    if (typeof globalThis.removeEventListener === 'function') {
      globalThis.removeEventListener('online', this.onOnline);
      globalThis.removeEventListener('pagehide', this.onHide);
    }
    if (typeof document !== 'undefined') document.removeEventListener('visibilitychange', this.onHide);
    this.#setState('closed');
  }

  /**
   * Sends a message. While (re)connecting it is queued (bounded) and sent after the Welcome.
   * Throws when closed, replaced, or the queue is full: the caller learns of every loss.
   * @param {Record<string, unknown>} msg
   */
  send(msg) {
    const text = JSON.stringify(msg);
    if (this.state === 'open' && this.ws && this.ws.readyState === 1) {
      this.ws.send(text);
      return;
    }
    if (this.state === 'connecting' || this.state === 'reconnecting' || (this.state === 'open' && this.ws)) {
      if (this.queue.length >= this.maxQueue) throw new SignalError('Not connected to the signaling server (send queue full).');
      this.queue.push(text);
      return;
    }
    throw new SignalError(
      this.state === 'replaced'
        ? 'Signed in elsewhere: this page is disconnected.'
        : this.state === 'disconnected'
          ? 'Disconnected by the application.'
          : 'Not connected to the signaling server.',
    );
  }

  /** @param {string} to @param {string} sessionID @param {string} sdp @param {{seq?:number, tieBreaker?:number}} [o] */
  sendOffer(to, sessionID, sdp, o = {}) {
    this.send({ type: 'Offer', to, sessionID, sdp, ...defined({ seq: o.seq, tieBreaker: o.tieBreaker }) });
  }

  /** @param {string} to @param {string} sessionID @param {string} sdp @param {{seq?:number}} [o] */
  sendAnswer(to, sessionID, sdp, o = {}) {
    this.send({ type: 'Answer', to, sessionID, sdp, ...defined({ seq: o.seq }) });
  }

  /** @param {string} to @param {string} sessionID @param {{seq?:number}} [o] */
  sendOk(to, sessionID, o = {}) {
    this.send({ type: 'Ok', to, sessionID, ...defined({ seq: o.seq }) });
  }

  /**
   * @param {string} to @param {string} sessionID
   * @param {IceCandidateInit | null} candidate  null: end of candidates
   * @param {{seq?:number}} [o]
   */
  sendCandidate(to, sessionID, candidate, o = {}) {
    this.send({ type: 'Candidate', to, sessionID, candidate, ...defined({ seq: o.seq }) });
  }

  /** @param {string} to @param {string} sessionID @param {{seq?:number}} [o] */
  sendShutdown(to, sessionID, o = {}) {
    this.send({ type: 'Shutdown', to, sessionID, ...defined({ seq: o.seq }) });
  }

  /**
   * @param {string} to @param {string} sessionID @param {ErrorType} errorType
   * @param {{seq?:number, description?:string}} [o]
   */
  sendError(to, sessionID, errorType, o = {}) {
    this.send({ type: 'Error', to, sessionID, errorType, ...defined({ seq: o.seq, description: o.description }) });
  }

  /** @param {ClientState} state @param {Record<string, unknown>} [extra] */
  #setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, node: this.node, ...extra } }));
  }

  /** The ICE servers of the latest login (a copy; empty before the first login). */
  get iceServers() {
    return (this.endpoint?.iceServers ?? []).map((s) => ({ ...s }));
  }

  #clearTimers() {
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    if (this.pongTimer !== undefined) clearTimeout(this.pongTimer);
    if (this.ackTimer !== undefined) clearTimeout(this.ackTimer);
    this.retryTimer = this.pingTimer = this.pongTimer = this.ackTimer = undefined;
  }

  /** Forgets the session: the next connection starts a new one. */
  #endSession() {
    this.session = null;
    this.resumed = false;
    this.lastN = 0;
    this.ackedN = 0;
  }

  #closeStale() {
    const s = this.stale;
    this.stale = null;
    if (!s) return;
    try {
      s.close(CLOSE.NORMAL, 'superseded');
    } catch {
      // already closed
    }
  }

  /** Sends the cumulative Ack now if anything is unacknowledged. */
  #flushAck() {
    if (this.ackTimer !== undefined) clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    const ws = this.ws;
    if (this.state !== 'open' || !ws || ws.readyState !== 1 || this.lastN <= this.ackedN) return;
    ws.send(JSON.stringify({ type: 'Ack', n: this.lastN }));
    this.ackedN = this.lastN;
  }

  /** A numbered frame arrived: ack at once after `ackEvery` frames, else within `ackIntervalMs`. */
  #scheduleAck() {
    if (this.lastN - this.ackedN >= this.ackEvery) {
      this.#flushAck();
      return;
    }
    if (this.ackTimer === undefined) this.ackTimer = setTimeout(() => this.#flushAck(), this.ackIntervalMs);
  }

  /** One login + connect attempt. */
  async #attempt() {
    this.retryTimer = undefined;
    const mine = {};
    this.current = mine;
    let ep;
    try {
      ep = await login(this.central, this.user, { bearer: this.bearer, fetch: this.fetchImpl });
    } catch (e) {
      if (this.current !== mine) return;
      const err = e instanceof SignalError ? e : new SignalError(String(e));
      this.#failed(err, err.fatal);
      return;
    }
    if (this.current !== mine || this.state === 'closed') return;
    this.endpoint = ep;
    // Resume the session if there is one (the node decides whether it still can).
    const resuming = this.session;
    let ws;
    try {
      ws = new this.WS(resumeUrl(ep.connectUrl, resuming, this.lastN));
    } catch (e) {
      this.#failed(new SignalError(`Cannot open the signaling connection (${e instanceof Error ? e.message : e}).`), false);
      return;
    }
    this.ws = ws;
    let welcomed = false;
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      /** @type {any} */
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
      if (msg.type === 'Welcome' && !welcomed) {
        welcomed = true;
        this.#welcomed(msg, resuming);
      } else if (typeof msg.n === 'number') {
        this.#alive();
        // A frame at or below the highest seen was delivered already (replayed after a resume).
        if (msg.n <= this.lastN) {
          this.duplicates += 1;
          return;
        }
        this.lastN = msg.n;
        this.#scheduleAck();
      }
      this.#dispatch(msg);
    };
    ws.onclose = (ev) => this.#lost(ws, ev.code, ev.reason, welcomed);
  }

  /**
   * The connection `ws` ended (close event, or given up by the keepalive).
   * @param {WebSocket} ws @param {number} code @param {string} reason @param {boolean} welcomed
   */
  #lost(ws, code, reason, welcomed) {
    if (this.ws !== ws) return;
    this.ws = null;
    ws.onclose = null;
    ws.onmessage = null;
    this.#clearTimers();
    if (code === CLOSE.REPLACED) {
      this.#failFirst(new SignalError('This user signed in somewhere else.', { fatal: true }));
      this.queue = [];
      this.#endSession();
      this.#setState('replaced', { code, reason });
      this.dispatchEvent(new CustomEvent('replaced', { detail: { code, reason } }));
      return;
    }
    if (code === CLOSE.APP_DISCONNECT) {
      const text = 'Disconnected by the application.';
      this.#failFirst(new SignalError(text, { fatal: true }));
      this.queue = [];
      this.#endSession();
      this.#setState('disconnected', { code, reason });
      this.dispatchEvent(new CustomEvent('disconnected', { detail: { code, reason, text } }));
      return;
    }
    if (code === CLOSE.NORMAL && welcomed) {
      this.#endSession();
      this.#setState('closed', { code, reason });
      return;
    }
    const node = this.endpoint?.node ?? '';
    this.#failed(
      new SignalError(
        welcomed
          ? `Connection to ${this.node} lost (${closeText(code)}).`
          : `Could not connect to the signaling server ${node} (${closeText(code)}).`,
      ),
      false,
      code,
    );
  }

  /**
   * @param {Welcome} msg
   * @param {string | null} resuming  the session this connection asked to resume
   */
  #welcomed(msg, resuming) {
    const reconnect = this.everConnected;
    this.everConnected = true;
    this.attempt = 0;
    this.node = msg.node;
    // The node decides: `resumed:true` means the numbering continues. The contract says the
    // token stays the same; a node that hands out another one is followed (the next resume
    // presents the token of the last Welcome).
    const resumed = !!resuming && msg.resumed === true;
    if (!resumed) {
      // A new session: numbering starts again at 1.
      this.lastN = 0;
      this.ackedN = 0;
    } else {
      // The node knows `last` from the URL: everything up to it counts as acknowledged.
      this.ackedN = this.lastN;
    }
    this.session = typeof msg.session === 'string' && msg.session ? msg.session : null;
    this.resumed = resumed;
    this.resumeWindowMs = Number(msg.resumeWindowMs) || 0;
    this.#closeStale();
    this.#setState('open', { resumed, session: this.session });
    const queued = this.queue;
    this.queue = [];
    for (const t of queued) this.ws?.send(t);
    this.#startPing();
    if (this.firstConnect) {
      this.firstConnect.resolve(msg);
      this.firstConnect = undefined;
    }
    if (reconnect) this.dispatchEvent(new CustomEvent('reconnected', { detail: { node: msg.node, resumed } }));
    if (resuming && !resumed) this.dispatchEvent(new CustomEvent('sessionreset', { detail: { node: msg.node, previous: resuming } }));
  }

  /** @param {SignalError} err */
  #failFirst(err) {
    if (this.firstConnect) {
      this.firstConnect.reject(err);
      this.firstConnect = undefined;
    }
  }

  /**
   * An attempt failed or an open connection was lost: give up (first connect, fatal) or retry.
   * @param {SignalError} err @param {boolean} fatal @param {number} [code]
   */
  #failed(err, fatal, code) {
    if (this.state === 'closed' || this.state === 'replaced') return;
    if (!this.everConnected || fatal || (code !== undefined && !shouldReconnect(code))) {
      this.#failFirst(err);
      this.queue = [];
      this.#setState('closed', { code, reason: err.message });
      return;
    }
    const delay = backoffDelay(this.attempt, { baseMs: this.baseBackoffMs, maxMs: this.maxBackoffMs });
    this.attempt += 1;
    this.#setState('reconnecting', { code, reason: err.message, retryInMs: Math.round(delay) });
    this.retryTimer = setTimeout(() => void this.#attempt(), delay);
  }

  #startPing() {
    this.pingTimer = setInterval(() => {
      const ws = this.ws;
      if (!ws || ws.readyState !== 1) return;
      ws.send('{"type":"Ping"}');
      if (this.pongTimer === undefined) {
        this.pongTimer = setTimeout(() => {
          this.pongTimer = undefined;
          // No answer: treat as network loss. Do not wait for a closing handshake that a dead
          // network never completes, and do not send a close frame either (a client close
          // ends the session on the node): abandon this socket, resume on a new one, and
          // close the old one once the new one is welcomed (the node has replaced it by then).
          if (this.ws !== ws) return;
          this.#closeStale();
          this.stale = ws;
          this.#lost(ws, CLOSE.KEEPALIVE, 'keepalive timeout', true);
        }, this.pingTimeoutMs);
      }
    }, this.pingIntervalMs);
  }

  /** Any frame proves the connection alive. */
  #alive() {
    if (this.pongTimer !== undefined) {
      clearTimeout(this.pongTimer);
      this.pongTimer = undefined;
    }
  }

  /** @param {RoapMessage} msg */
  #dispatch(msg) {
    this.#alive();
    if (msg.type === 'Error') {
      const peer = 'from' in msg ? msg.from : undefined;
      const text = describeError(msg.errorType, { peer, description: msg.description });
      if (msg.origin === 'server') this.dispatchEvent(new SignalEvent('servererror', msg, text));
      this.dispatchEvent(new SignalEvent('Error', msg, text));
      this.dispatchEvent(new SignalEvent('message', msg, text));
      return;
    }
    this.dispatchEvent(new SignalEvent(msg.type, msg));
    this.dispatchEvent(new SignalEvent('message', msg));
  }
}

/** @param {number} code */
function closeText(code) {
  switch (code) {
    case CLOSE.GOING_AWAY:
      return 'the server is shutting down';
    case CLOSE.DRAINING:
      return 'the server is moving its users elsewhere';
    case CLOSE.TRY_AGAIN_LATER:
      return 'the server is busy';
    case CLOSE.TOO_LARGE:
      return 'a message was too large';
    case CLOSE.KEEPALIVE:
      return 'the server stopped answering';
    case CLOSE.ABNORMAL:
      return 'network error or refused';
    case CLOSE.APP_DISCONNECT:
      return 'disconnected by the application';
    default:
      return `code ${code}`;
  }
}

/**
 * Drops undefined values (so that optional fields are omitted, not sent as null).
 * @param {Record<string, unknown>} o
 */
function defined(o) {
  /** @type {Record<string, unknown>} */
  const r = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) r[k] = v;
  return r;
}
