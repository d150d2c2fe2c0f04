// @ts-check
/**
 * @file The browser's signaling client: login at central, the WebSocket to the assigned signal
 * node, automatic reconnect through central that resumes the session (numbered frames,
 * batched acks, duplicates dropped), typed ROAP events and send helpers, Ping keepalive, and
 * plain-words text for every error type.
 *
 * Contract: /work/shared/CONTRACT.md sections 2 (login), 3 (WebSocket protocol), 5 (sessions),
 * 6 (chat messages through the cluster: `sendMessage`, answered by Accepted or an Error with
 * the message's id), 7 (presence: `setPresence`, `subscribe`, `unsubscribe`), 8 (rooms: `join`,
 * `leave`, `sendRoomMessage`) and 9 (ICE servers: every login answer carries fresh STUN/TURN
 * servers, kept in `client.iceServers`).
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
 *   'BADMESSAGE'|'FORBIDDEN'|'TOOLARGE'|'RATELIMITED'|'UNAVAILABLE'|'MAILBOXFULL'|'TOOMANY'|
 *   'ROOMFULL'|'NOTMEMBER'} ErrorType
 */

/**
 * A chat message as the node delivers it (contract sections 6 and 8): `to` for a message to
 * this user, `room` for a room message; `delayed` when it was stored while we were offline.
 * @typedef {{type:'Message', from:string, to?:string, room?:string, id:string, body:string,
 *   contentType?:string, ts:number, delayed?:boolean, n?:number}} ChatFrame
 */

/**
 * The node's answer to a sent message: stored (`to`, `stored`) or passed to a room's members
 * (`room`, `recipients`).
 * @typedef {{type:'Accepted', id:string, to?:string, room?:string, ts:number, stored?:boolean,
 *   recipients?:number}} Accepted
 */

/** @typedef {{type:'Delivered', id:string, from:string}} Delivered */

/** @typedef {'online'|'away'|'busy'|'offline'} PresenceState */

/** @typedef {RoapMessage | ChatFrame | Accepted | Delivered | PresenceFrame | RoomFrame} ServerFrame */

/** @typedef {{type:'Presence', user:string, state:PresenceState, note?:string, since?:number}} PresenceFrame */

/**
 * Room frames (contract section 8).
 * @typedef {{type:'Joined', room:string, members:string[]}
 *   | {type:'MemberJoined', room:string, user:string}
 *   | {type:'MemberLeft', room:string, user:string}
 *   | {type:'Left', room:string}} RoomFrame
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
export const SERVER_ERROR_TYPES = Object.freeze([
  'OFFLINE', 'BADMESSAGE', 'FORBIDDEN', 'TOOLARGE', 'RATELIMITED', 'UNAVAILABLE', 'MAILBOXFULL', 'TOOMANY', 'ROOMFULL', 'NOTMEMBER',
]);
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
    case 'MAILBOXFULL':
      return `${whose.charAt(0).toUpperCase()}${whose.slice(1)} mailbox is full: they have too many messages waiting.`;
    case 'TOOMANY':
      return 'You are already following or in as many as the server allows.';
    case 'ROOMFULL':
      return 'That room is full.';
    case 'NOTMEMBER':
      return 'You are not in that room (any more).';
    default:
      return `Something went wrong (${errorType.toLowerCase()}).`;
  }
}

/**
 * Plain-words text for an Error answering a chat message (contract section 6 and 8).
 * @param {string} errorType
 * @param {{peer?:string, room?:string, description?:string}} [ctx]
 * @returns {string}
 */
export function describeChatError(errorType, ctx = {}) {
  const to = ctx.room ? `room ${ctx.room}` : ctx.peer || 'the other person';
  switch (errorType) {
    case 'MAILBOXFULL':
      return `Not sent: ${ctx.peer ? `${ctx.peer}'s` : 'their'} mailbox is full (too many messages waiting for them).`;
    case 'TOOLARGE':
      return 'Not sent: the message is too long.';
    case 'UNAVAILABLE':
      return `Not sent: the server could not store the message for ${to} just now. Try again in a moment.`;
    case 'RATELIMITED':
      return 'Not sent: too many messages too quickly. Wait a moment and try again.';
    case 'NOTMEMBER':
      return `Not sent: you are not in ${to}.`;
    case 'BADMESSAGE':
      return `Not sent: the server refused the message${ctx.description ? ` (${ctx.description})` : ''}.`;
    case 'TIMEOUT':
      return `Not sent: no answer from the server for the message to ${to}.`;
    default:
      return `Not sent: ${describeError(errorType, { peer: ctx.peer, description: ctx.description })}`;
  }
}

/** What this client says when a node does not know a frame type of sections 7-8. */
const UNSUPPORTED_TEXT = Object.freeze({
  SetPresence: 'This server does not support presence yet.',
  Subscribe: 'This server does not support presence yet.',
  Unsubscribe: 'This server does not support presence yet.',
  Join: 'This server does not support rooms yet.',
  Leave: 'This server does not support rooms yet.',
});

/** A chat message could not be sent: `errorType` from the node (or TIMEOUT / CLOSED here). */
export class ChatError extends Error {
  /** @param {string} message @param {string} errorType @param {string} id */
  constructor(message, errorType, id) {
    super(message);
    this.name = 'ChatError';
    this.errorType = errorType;
    this.id = id;
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
   * @param {ServerFrame} message
   * @param {string} [text] plain-words text (errors)
   */
  constructor(type, message, text) {
    super(type);
    this.message = message;
    this.text = text;
    /** @type {Promise<unknown>[]} */
    this.holds = [];
  }

  /**
   * Holds back the acknowledgement of this frame (and of every later one) until `p` settles,
   * e.g. until a chat message is written to IndexedDB: the node keeps a message in the mailbox
   * until it is acknowledged, so nothing is lost if the page dies before `p` is done.
   * @param {Promise<unknown>} p
   */
  waitUntil(p) {
    this.holds.push(p);
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
   *   maxBackoffMs?:number, maxQueue?:number, ackIntervalMs?:number, ackEvery?:number,
   *   messageTimeoutMs?:number, maxPendingMessages?:number, maxSubscriptions?:number,
   *   maxRooms?:number}} opts
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
    /** how long a sent chat message waits for its Accepted (counted from the write to an open socket) */
    this.messageTimeoutMs = opts.messageTimeoutMs ?? 15000;
    /** chat messages waiting for their Accepted, at most */
    this.maxPendingMessages = opts.maxPendingMessages ?? 256;
    /** subscriptions and rooms this client remembers (to renew after a session reset), at most */
    this.maxSubscriptions = opts.maxSubscriptions ?? 1000;
    this.maxRooms = opts.maxRooms ?? 64;
    /**
     * Chat messages sent and not yet answered, by id. `sentOn` is the socket the frame was
     * written to (null while it waits in the send queue): after a reconnect every one written
     * to an earlier socket is sent again, with the same id (the node deduplicates).
     * @type {Map<string, {id:string, text:string, to?:string, room?:string, sentOn:WebSocket|null,
     *   timer:ReturnType<typeof setTimeout>|undefined, resolve:(a:Accepted) => void, reject:(e:ChatError) => void}>}
     */
    this.pendingChat = new Map();
    /** Joins and Leaves waiting for Joined / Left, by room. @type {Map<string, {resolve:(m:any) => void, reject:(e:SignalError) => void, timer:ReturnType<typeof setTimeout>}>} */
    this.pendingRooms = new Map();
    /** the presence this session should have (renewed after a session reset) */
    /** @type {{state:'online'|'away'|'busy'|'invisible', note?:string}} */
    this.presence = { state: 'online' };
    /** users this session watches (renewed after a session reset) @type {Set<string>} */
    this.subscriptions = new Set();
    /** rooms this session is in or joining (joined again after a session reset) @type {Set<string>} */
    this.rooms = new Set();
    /** frame numbers whose handling is not finished (SignalEvent.waitUntil): not acknowledged yet @type {Set<number>} */
    this.unsettled = new Set();
    /**
     * Frame types of sections 7-8 the node answered with BADMESSAGE "unknown message type" (a
     * node without presence or rooms): not sent again to it, reported once as `unsupported`.
     * @type {Set<string>}
     */
    this.unsupported = new Set();
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
    this.presence = { state: 'online' };
    this.subscriptions.clear();
    this.rooms.clear();
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
    this.#sendText(JSON.stringify(msg));
  }

  /**
   * @param {string} text
   * @returns {'sent'|'queued'}
   */
  #sendText(text) {
    if (this.state === 'open' && this.ws && this.ws.readyState === 1) {
      this.ws.send(text);
      return 'sent';
    }
    if (this.state === 'connecting' || this.state === 'reconnecting' || (this.state === 'open' && this.ws)) {
      if (this.queue.length >= this.maxQueue) throw new SignalError('Not connected to the signaling server (send queue full).');
      this.queue.push(text);
      return 'queued';
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

  /**
   * Sends a chat message to `to` through the cluster (contract section 6). Resolves with the
   * node's Accepted (`stored:true`: kept until `to` connects; `stored:false`: pushed to their
   * session at once); rejects with a ChatError (`errorType` MAILBOXFULL, TOOLARGE, UNAVAILABLE,
   * RATELIMITED, BADMESSAGE from the node; TIMEOUT without an answer within `messageTimeoutMs`;
   * CLOSED when this client closes). Retrying with the same `id` is safe: the node answers a
   * duplicate with the first Accepted and delivers it once. After a reconnect the client sends
   * every unanswered message again by itself.
   * @param {string} to @param {string} id 1 to 64 bytes, no whitespace, unique per sender
   * @param {string} body
   * @param {{contentType?:string, extra?:Record<string, unknown>}} [opts]
   * @returns {Promise<Accepted>}
   */
  sendMessage(to, id, body, opts = {}) {
    return this.#sendChat({ ...opts.extra, type: 'Message', to, id, body, ...defined({ contentType: opts.contentType }) }, { to });
  }

  /**
   * Sends a message to every other member of `room` (contract section 8); resolves with the
   * Accepted (`recipients`), rejects like `sendMessage` (NOTMEMBER when not in the room).
   * @param {string} room @param {string} id @param {string} body
   * @param {{contentType?:string, extra?:Record<string, unknown>}} [opts]
   * @returns {Promise<Accepted>}
   */
  sendRoomMessage(room, id, body, opts = {}) {
    return this.#sendChat({ ...opts.extra, type: 'Message', room, id, body, ...defined({ contentType: opts.contentType }) }, { room });
  }

  /**
   * @param {Record<string, unknown>} frame @param {{to?:string, room?:string}} target
   * @returns {Promise<Accepted>}
   */
  #sendChat(frame, target) {
    const id = String(frame.id);
    const ctx = { peer: target.to, room: target.room };
    if (this.pendingChat.has(id)) {
      return Promise.reject(new ChatError('Not sent: a message with this id is already on its way.', 'BADMESSAGE', id));
    }
    if (this.pendingChat.size >= this.maxPendingMessages) {
      return Promise.reject(new ChatError('Not sent: too many messages are waiting for the server. Try again in a moment.', 'TOOMANY', id));
    }
    const text = JSON.stringify(frame);
    return new Promise((resolve, reject) => {
      let how;
      try {
        how = this.#sendText(text);
      } catch (e) {
        reject(new ChatError(`Not sent: ${e instanceof Error ? e.message : e}`, 'CLOSED', id));
        return;
      }
      const entry = { id, text, ...target, sentOn: how === 'sent' ? this.ws : null, timer: undefined, resolve, reject };
      this.pendingChat.set(id, entry);
      if (how === 'sent') this.#armChat(entry, ctx);
    });
  }

  /** @param {{id:string, timer:ReturnType<typeof setTimeout>|undefined}} entry @param {{peer?:string, room?:string}} ctx */
  #armChat(entry, ctx) {
    if (entry.timer !== undefined) clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      const e = this.pendingChat.get(entry.id);
      if (e !== entry) return;
      this.pendingChat.delete(entry.id);
      e.reject(new ChatError(describeChatError('TIMEOUT', ctx), 'TIMEOUT', entry.id));
    }, this.messageTimeoutMs);
  }

  /** Rejects every unanswered chat message and room request (the client is closed for good). @param {string} why */
  #failPending(why) {
    const chat = [...this.pendingChat.values()];
    this.pendingChat.clear();
    for (const e of chat) {
      if (e.timer !== undefined) clearTimeout(e.timer);
      e.reject(new ChatError(`Not sent: ${why}`, 'CLOSED', e.id));
    }
    const rooms = [...this.pendingRooms.values()];
    this.pendingRooms.clear();
    for (const r of rooms) {
      clearTimeout(r.timer);
      r.reject(new SignalError(why));
    }
  }

  /**
   * Sets this user's presence (contract section 7): `invisible` shows as offline to watchers.
   * Kept across reconnects and set again after a session reset.
   * @param {'online'|'away'|'busy'|'invisible'} state @param {string} [note] at most 256 bytes
   */
  setPresence(state, note) {
    if (note !== undefined && new TextEncoder().encode(note).length > 256) throw new SignalError('The note is at most 256 bytes long.');
    if (this.unsupported.has('SetPresence')) throw new SignalError(UNSUPPORTED_TEXT.SetPresence);
    this.send({ type: 'SetPresence', state, ...defined({ note: note || undefined }) });
    this.presence = { state, ...defined({ note: note || undefined }) };
  }

  /**
   * Watches `users` (contract section 7): one Presence event per user with the current state,
   * then one per change. Remembered and renewed after a session reset.
   * @param {string[]} users
   */
  subscribe(users) {
    const fresh = [...new Set(users)].filter((u) => !this.subscriptions.has(u));
    if (fresh.length === 0 || this.unsupported.has('Subscribe')) return;
    if (this.subscriptions.size + fresh.length > this.maxSubscriptions) {
      throw new SignalError(`You can follow at most ${this.maxSubscriptions} people.`);
    }
    for (let i = 0; i < fresh.length; i += 1000) this.send({ type: 'Subscribe', users: fresh.slice(i, i + 1000) });
    for (const u of fresh) this.subscriptions.add(u);
  }

  /** Stops watching `users`. @param {string[]} users */
  unsubscribe(users) {
    const known = [...new Set(users)].filter((u) => this.subscriptions.has(u));
    if (known.length === 0) return;
    if (!this.unsupported.has('Subscribe')) {
      for (let i = 0; i < known.length; i += 1000) this.send({ type: 'Unsubscribe', users: known.slice(i, i + 1000) });
    }
    for (const u of known) this.subscriptions.delete(u);
  }

  /**
   * Joins `room` (contract section 8); resolves with the Joined frame (`members` include us),
   * rejects with a SignalError (ROOMFULL, TOOMANY, ...) in plain words. Rooms are joined again
   * after a session reset.
   * @param {string} room
   * @returns {Promise<{type:'Joined', room:string, members:string[]}>}
   */
  join(room) {
    if (this.unsupported.has('Join')) return Promise.reject(new SignalError(UNSUPPORTED_TEXT.Join));
    if (!this.rooms.has(room) && this.rooms.size >= this.maxRooms) {
      return Promise.reject(new SignalError(`You can be in at most ${this.maxRooms} rooms.`));
    }
    const p = this.#awaitRoom(room);
    try {
      this.send({ type: 'Join', room });
    } catch (e) {
      this.#settleRoom(room, null, e instanceof SignalError ? e : new SignalError(String(e)));
      return p;
    }
    this.rooms.add(room);
    return p;
  }

  /**
   * Leaves `room`; resolves with the Left frame.
   * @param {string} room
   * @returns {Promise<{type:'Left', room:string}>}
   */
  leave(room) {
    this.rooms.delete(room);
    const p = this.#awaitRoom(room);
    try {
      this.send({ type: 'Leave', room });
    } catch (e) {
      this.#settleRoom(room, null, e instanceof SignalError ? e : new SignalError(String(e)));
    }
    return p;
  }

  /** @param {string} room @returns {Promise<any>} */
  #awaitRoom(room) {
    return new Promise((resolve, reject) => {
      this.#settleRoom(room, null, new SignalError('superseded by a newer request for the same room'));
      const timer = setTimeout(() => this.#settleRoom(room, null, new SignalError(`No answer from the server about room ${room}.`)), this.messageTimeoutMs);
      this.pendingRooms.set(room, { resolve, reject, timer });
    });
  }

  /** @param {string} room @param {any} value @param {SignalError | null} [err] */
  #settleRoom(room, value, err = null) {
    const r = this.pendingRooms.get(room);
    if (!r) return;
    this.pendingRooms.delete(room);
    clearTimeout(r.timer);
    if (err) r.reject(err);
    else r.resolve(value);
  }

  /** @param {ClientState} state @param {Record<string, unknown>} [extra] */
  #setState(state, extra = {}) {
    this.state = state;
    if (state === 'closed' || state === 'replaced' || state === 'disconnected') {
      this.#failPending(
        state === 'replaced' ? 'signed in elsewhere.' : state === 'disconnected' ? 'disconnected by the application.' : 'not connected to the signaling server.',
      );
    }
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
    const upTo = this.#ackable();
    if (this.state !== 'open' || !ws || ws.readyState !== 1 || upTo <= this.ackedN) return;
    ws.send(JSON.stringify({ type: 'Ack', n: upTo }));
    this.ackedN = upTo;
  }

  /** The highest frame number that may be acknowledged: below the first one still being handled. */
  #ackable() {
    let upTo = this.lastN;
    for (const n of this.unsettled) upTo = Math.min(upTo, n - 1);
    return upTo;
  }

  /** A numbered frame arrived: ack at once after `ackEvery` frames, else within `ackIntervalMs`. */
  #scheduleAck() {
    if (this.#ackable() - this.ackedN >= this.ackEvery) {
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
        const holds = this.#dispatch(msg);
        if (holds.length > 0) {
          // Acknowledge this frame only once the app has handled it (e.g. stored a message).
          const n = msg.n;
          const set = this.unsettled;
          set.add(n);
          void Promise.allSettled(holds).then(() => {
            set.delete(n);
            if (set === this.unsettled) this.#scheduleAck();
          });
        }
        this.#scheduleAck();
        return;
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
      this.unsettled = new Set();
    } else {
      // The node knows `last` from the URL: everything up to it counts as acknowledged.
      this.ackedN = this.lastN;
    }
    this.session = typeof msg.session === 'string' && msg.session ? msg.session : null;
    this.resumed = resumed;
    this.resumeWindowMs = Number(msg.resumeWindowMs) || 0;
    this.#closeStale();
    this.#setState('open', { resumed, session: this.session });
    const ws = this.ws;
    if (resuming && !resumed) this.#renewSession();
    // Chat messages written to an earlier socket and not answered may not have reached the
    // node: send them again, before the queued frames (order), with the same id (deduplicated).
    for (const e of this.pendingChat.values()) {
      if (e.sentOn !== null && e.sentOn !== ws) {
        ws?.send(e.text);
        e.sentOn = ws;
        this.#armChat(e, { peer: e.to, room: e.room });
      }
    }
    const queued = this.queue;
    this.queue = [];
    for (const t of queued) ws?.send(t);
    for (const e of this.pendingChat.values()) {
      if (e.sentOn === null) {
        e.sentOn = ws;
        this.#armChat(e, { peer: e.to, room: e.room });
      }
    }
    this.#startPing();
    if (this.firstConnect) {
      this.firstConnect.resolve(msg);
      this.firstConnect = undefined;
    }
    if (reconnect) this.dispatchEvent(new CustomEvent('reconnected', { detail: { node: msg.node, resumed } }));
    if (resuming && !resumed) this.dispatchEvent(new CustomEvent('sessionreset', { detail: { node: msg.node, previous: resuming } }));
  }

  /**
   * The frame type of sections 7-8 that an "unknown message type" BADMESSAGE names, or ''.
   * @param {any} msg
   */
  #unsupportedType(msg) {
    const m = /unknown message type "(\w+)"/.exec(typeof msg.description === 'string' ? msg.description : '');
    return m && m[1] in UNSUPPORTED_TEXT ? m[1] : '';
  }

  /**
   * A resume was refused: the new session starts online, watching nobody, in no room. Set the
   * presence again, subscribe to everyone again and join every room again (contract section 5).
   */
  #renewSession() {
    const ws = this.ws;
    if (!ws) return;
    if (this.presence.state !== 'online' || this.presence.note) ws.send(JSON.stringify({ type: 'SetPresence', ...this.presence }));
    const users = [...this.subscriptions];
    for (let i = 0; i < users.length; i += 1000) ws.send(JSON.stringify({ type: 'Subscribe', users: users.slice(i, i + 1000) }));
    for (const room of this.rooms) ws.send(JSON.stringify({ type: 'Join', room }));
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

  /**
   * Settles what a frame answers, then dispatches it. Returns the promises the listeners asked
   * to wait for (`SignalEvent.waitUntil`).
   * @param {any} msg
   * @returns {Promise<unknown>[]}
   */
  #dispatch(msg) {
    this.#alive();
    /** @type {SignalEvent[]} */
    let events;
    if (msg.type === 'Error') {
      const peer = typeof msg.from === 'string' ? msg.from : undefined;
      let text = describeError(msg.errorType, { peer, description: msg.description });
      if (typeof msg.id === 'string') {
        // An Error answering a chat message carries its id (and `room` for a room message).
        const e = this.pendingChat.get(msg.id);
        text = describeChatError(msg.errorType, { peer: e?.to ?? peer, room: e?.room ?? msg.room, description: msg.description });
        if (e && (e.room !== undefined ? msg.room === e.room : msg.room === undefined)) {
          this.pendingChat.delete(msg.id);
          if (e.timer !== undefined) clearTimeout(e.timer);
          e.reject(new ChatError(text, msg.errorType, msg.id));
        }
      } else if (msg.errorType === 'BADMESSAGE' && msg.sessionID === undefined && msg.room === undefined && this.#unsupportedType(msg)) {
        // A node without presence or rooms: stop sending those frames, say it once.
        const type = this.#unsupportedType(msg);
        text = UNSUPPORTED_TEXT[/** @type {keyof typeof UNSUPPORTED_TEXT} */ (type)];
        const first = !this.unsupported.has(type);
        this.unsupported.add(type);
        if (type === 'Join' || type === 'Leave') {
          for (const room of [...this.pendingRooms.keys()]) this.#settleRoom(room, null, new SignalError(text));
          this.rooms.clear();
        }
        if (type === 'Subscribe') this.subscriptions.clear();
        if (first) this.dispatchEvent(new CustomEvent('unsupported', { detail: { type, text } }));
        this.dispatchEvent(new SignalEvent('Error', msg, text));
        this.dispatchEvent(new SignalEvent('message', msg, text));
        return [];
      } else if (typeof msg.room === 'string' && msg.sessionID === undefined) {
        // An Error answering Join or Leave carries the room.
        text = describeError(msg.errorType, { description: msg.description });
        if (msg.errorType !== 'NOTMEMBER') this.rooms.delete(msg.room);
        this.#settleRoom(msg.room, null, new SignalError(`Room ${msg.room}: ${text}`));
      }
      events = [new SignalEvent('Error', msg, text), new SignalEvent('message', msg, text)];
      if (msg.origin === 'server') events.unshift(new SignalEvent('servererror', msg, text));
    } else {
      if (msg.type === 'Accepted' && typeof msg.id === 'string') {
        const e = this.pendingChat.get(msg.id);
        if (e && (e.room ?? null) === (typeof msg.room === 'string' ? msg.room : null)) {
          this.pendingChat.delete(msg.id);
          if (e.timer !== undefined) clearTimeout(e.timer);
          e.resolve(msg);
        }
      } else if (msg.type === 'Joined' && typeof msg.room === 'string') {
        this.#settleRoom(msg.room, msg);
      } else if (msg.type === 'Left' && typeof msg.room === 'string') {
        this.#settleRoom(msg.room, msg);
      }
      events = [new SignalEvent(msg.type, msg), new SignalEvent('message', msg)];
    }
    /** @type {Promise<unknown>[]} */
    const holds = [];
    for (const ev of events) {
      this.dispatchEvent(ev);
      holds.push(...ev.holds);
    }
    return holds;
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
