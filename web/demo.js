// @ts-check
/**
 * @file The demo IM page: sign in at central (`location.origin`), show the assigned node, chat
 * with people by name through the cluster (contract section 6: stored for offline contacts,
 * delivered ticks, failures with a retry; history in IndexedDB), see their presence and set
 * one's own (section 7), call them and send files peer to peer with progress and cancel, join
 * rooms with a room chat and a mesh group call (section 8), and show every error in plain
 * words. `?test=1` asks for the (fake) microphone once before the first peer connection so
 * that headless Chromium gathers loopback ICE candidates.
 */

import { SignalClient, describeError } from './signal-client.js';
import { PeerManager } from './roap-peer.js';
import { FileTransfer } from './file-transfer.js';
import { ChatStore } from './chat-store.js';
import { GroupCall, CALL_CONTENT_TYPE, isGroupSession, parseAnnouncement } from './group-call.js';

/** @typedef {import('./roap-peer.js').RoapPeer} RoapPeer */
/** @typedef {import('./file-transfer.js').TransferInfo} TransferInfo */
/** @typedef {import('./chat-store.js').ChatRecord} ChatRecord */
/** @typedef {import('./chat-store.js').NewRecord} NewRecord */
/** @typedef {import('./chat-store.js').Target} Target */
/** @typedef {import('./signal-client.js').SignalEvent} SignalEvent */

/**
 * @typedef {object} Room
 * @property {string} name
 * @property {Set<string>} members  as the node last said (Joined, MemberJoined, MemberLeft)
 * @property {boolean} joined
 * @property {number} unread
 * @property {GroupCall} call
 */

/**
 * @typedef {object} Contact
 * @property {string} name
 * @property {RoapPeer | null} peer
 * @property {FileTransfer | null} ft
 * @property {'calling'|'connecting'|'connected'|'ended'|'error'} state
 * @property {string} notice      last error, in plain words
 * @property {number} unread
 * @property {Map<string, TransferInfo>} transfers
 * @property {{ts:number, id:string} | null} oldest  last record of the oldest page shown
 */

const params = new URLSearchParams(location.search);
const TEST = params.get('test') === '1';
// `?relay=1`: peer connections use only TURN relay candidates (to check a TURN deployment).
const RELAY_ONLY = params.get('relay') === '1';
const PAGE = 30;

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const el = {
  status: $('status'),
  statusText: $('status-text'),
  login: $('login'),
  loginForm: /** @type {HTMLFormElement} */ ($('login-form')),
  loginName: /** @type {HTMLInputElement} */ ($('login-name')),
  loginButton: /** @type {HTMLButtonElement} */ ($('login-button')),
  loginError: $('login-error'),
  app: $('app'),
  me: $('me'),
  node: $('node'),
  nodeUrl: $('node-url'),
  session: $('session'),
  logout: $('logout'),
  callForm: /** @type {HTMLFormElement} */ ($('call-form')),
  callName: /** @type {HTMLInputElement} */ ($('call-name')),
  contacts: $('contacts'),
  contactsEmpty: $('contacts-empty'),
  convEmpty: $('conv-empty'),
  conv: $('conv'),
  convName: $('conv-name'),
  convState: $('conv-state'),
  convNotice: $('conv-notice'),
  hangup: /** @type {HTMLButtonElement} */ ($('hangup')),
  recall: /** @type {HTMLButtonElement} */ ($('recall')),
  messages: $('messages'),
  older: /** @type {HTMLButtonElement} */ ($('older')),
  messageList: $('message-list'),
  transfers: $('transfers'),
  composer: /** @type {HTMLFormElement} */ ($('composer')),
  fileInput: /** @type {HTMLInputElement} */ ($('file-input')),
  chatInput: /** @type {HTMLInputElement} */ ($('chat-input')),
  sendButton: /** @type {HTMLButtonElement} */ ($('send-button')),
  toasts: $('toasts'),
  chatButton: /** @type {HTMLButtonElement} */ ($('chat-button')),
  presenceForm: /** @type {HTMLFormElement} */ ($('presence-form')),
  presenceState: /** @type {HTMLSelectElement} */ ($('presence-state')),
  presenceNote: /** @type {HTMLInputElement} */ ($('presence-note')),
  roomForm: /** @type {HTMLFormElement} */ ($('room-form')),
  roomName: /** @type {HTMLInputElement} */ ($('room-name')),
  rooms: $('rooms'),
  roomView: $('room-view'),
  roomTitle: $('room-title'),
  roomState: $('room-state'),
  roomMembers: $('room-members'),
  roomCall: $('room-call'),
  callPeers: $('call-peers'),
  callJoin: /** @type {HTMLButtonElement} */ ($('call-join')),
  callLeave: /** @type {HTMLButtonElement} */ ($('call-leave')),
  roomLeave: /** @type {HTMLButtonElement} */ ($('room-leave')),
  roomMessages: $('room-messages'),
  roomMessageList: $('room-message-list'),
  roomComposer: /** @type {HTMLFormElement} */ ($('room-composer')),
  roomInput: /** @type {HTMLInputElement} */ ($('room-input')),
};

/** Page state (also exposed as `window.demo` for tests and the console). */
const app = {
  /** @type {SignalClient | null} */
  client: null,
  /** @type {PeerManager | null} */
  manager: null,
  /** @type {ChatStore | null} */
  store: null,
  user: '',
  /** @type {Map<string, Contact>} */
  contacts: new Map(),
  /** @type {string | null} */
  selected: null,
  /** @type {MediaStream | null} */
  testStream: null,
  /** @type {string[]} plain-words errors shown, newest last */
  errors: [],
  /** @type {{state:string, code?:number, reason?:string, resumed?:boolean}[]} the client's last state changes */
  states: [],
  /** @type {{node:string, resumed:boolean}[]} the client's reconnects, newest last */
  reconnects: [],
  /** @type {Map<string, {state:string, note:string, since:number}>} watched users' presence */
  presence: new Map(),
  /** @type {Map<string, Room>} rooms joined (or being joined) */
  rooms: new Map(),
  /** @type {string | null} the room shown (instead of a contact) */
  selectedRoom: null,
  /** received messages dropped as duplicates (same sender and id) */
  duplicates: 0,
  /**
   * Messages sent from this page, by `conv\nid` (for retries and status without IndexedDB),
   * at most 1000 (the oldest are forgotten).
   * @type {Map<string, ChatRecord>}
   */
  outgoing: new Map(),
  /** (sender, id) of received messages when IndexedDB is not available (bounded) @type {Set<string>} */
  seen: new Set(),
};
Object.assign(window, { demo: app });

// ---------------------------------------------------------------- small helpers

/** @param {string} text @param {'error'|'info'} [kind] */
function toast(text, kind = 'error') {
  if (kind === 'error') {
    app.errors.push(text);
    if (app.errors.length > 200) app.errors.shift();
  }
  for (const shown of el.toasts.children) {
    if (shown.textContent === text) return; // already on screen
  }
  const t = document.createElement('div');
  t.className = `toast ${kind}`;
  t.textContent = text;
  el.toasts.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

/** @param {number} n */
function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** @param {number} ts */
function formatTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/** Checks a user id as the contract does. @param {string} id @returns {string} problem or '' */
function userIdProblem(id) {
  if (!id) return 'Please enter a name.';
  if (new TextEncoder().encode(id).length > 128) return 'Names are at most 128 bytes long.';
  // eslint-disable-next-line no-control-regex
  if (/[\s\u0000-\u001f\u007f-\u009f]/u.test(id)) return 'Names cannot contain spaces or control characters.';
  return '';
}

function newMessageID() {
  return `${Date.now().toString(36)}-${crypto.getRandomValues(new Uint32Array(2)).join('')}`;
}

// ---------------------------------------------------------------- connection status

const STATE_TEXT = {
  idle: 'Not signed in',
  connecting: 'Connecting…',
  open: 'Connected',
  reconnecting: 'Connection lost, reconnecting…',
  replaced: 'Signed in elsewhere',
  disconnected: 'Disconnected by the application',
  closed: 'Disconnected',
};

/** @param {string} state */
function showClientState(state) {
  el.status.dataset.state = state;
  const text = STATE_TEXT[/** @type {keyof typeof STATE_TEXT} */ (state)] ?? state;
  el.statusText.textContent = app.client && state === 'open' ? `${app.user} · ${app.client.node} · ${text}` : text;
}

function showEndpoint() {
  const c = app.client;
  if (!c) return;
  el.me.textContent = app.user;
  el.node.textContent = c.node || c.endpoint?.node || '';
  el.nodeUrl.textContent = c.endpoint?.url ?? '';
}

/** The session line under the endpoint: new, or resumed after a reconnect (contract section 5). */
function showSession() {
  const c = app.client;
  if (!c || !c.session) {
    el.session.textContent = '';
    delete el.session.dataset.resumed;
    return;
  }
  el.session.dataset.resumed = String(c.resumed);
  el.session.textContent = c.resumed ? 'Session resumed' : 'New session';
}

// ---------------------------------------------------------------- sign in / out

el.loginForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const user = el.loginName.value.trim();
  const problem = userIdProblem(user);
  el.loginError.textContent = problem;
  if (problem) return;
  el.loginButton.disabled = true;
  try {
    await signIn(user);
  } catch (e) {
    el.loginError.textContent = e instanceof Error ? e.message : String(e);
    app.client?.close();
    app.client = null;
    showClientState('idle');
  } finally {
    el.loginButton.disabled = false;
  }
});

/** @param {string} user */
async function signIn(user) {
  if (TEST && !app.testStream) {
    // Headless test runs only: with a media permission Chromium gathers loopback candidates.
    app.testStream = await navigator.mediaDevices.getUserMedia({ audio: true });
  }
  const client = new SignalClient({ central: location.origin, user });
  app.client = client;
  app.user = user;
  client.addEventListener('state', (ev) => {
    const d = /** @type {CustomEvent} */ (ev).detail;
    app.states.push({ state: d.state, code: d.code, reason: d.reason, resumed: d.resumed });
    if (app.states.length > 50) app.states.shift();
    showClientState(d.state);
    if (d.state === 'reconnecting') showEndpoint();
    if (d.state === 'open') showSession();
    if (d.state === 'closed' && d.reason && app.client === client && el.app.hidden === false) toast(d.reason);
  });
  client.addEventListener('reconnected', (ev) => {
    const d = /** @type {CustomEvent} */ (ev).detail;
    app.reconnects.push({ node: d.node, resumed: d.resumed });
    if (app.reconnects.length > 50) app.reconnects.shift();
    showEndpoint();
    showSession();
    // A resumed session lost nothing: only the node changed. A failed resume is 'sessionreset'.
    if (d.resumed) toast(`Reconnected via ${d.node}.`, 'info');
  });
  client.addEventListener('sessionreset', (ev) => {
    // The node could not resume the session: the client has set our presence, subscribed to
    // every contact and joined every room again by itself; announce our group calls again.
    // Calls still being set up may not complete and can be started again.
    for (const r of app.rooms.values()) r.call.reannounce();
    toast(`Reconnected via ${/** @type {CustomEvent} */ (ev).detail.node} with a new session: calls being set up may need to be started again.`, 'info');
  });
  // Chat through the cluster (contract section 6), presence (7), rooms (8).
  client.addEventListener('Message', (ev) => {
    const e = /** @type {SignalEvent} */ (ev);
    // Acknowledged (and so removed from the mailbox) only once it is in IndexedDB.
    e.waitUntil(onIncoming(/** @type {any} */ (e.message)));
  });
  client.addEventListener('Accepted', (ev) => {
    const m = /** @type {any} */ (/** @type {SignalEvent} */ (ev).message);
    if (typeof m.room === 'string') void setStatus({ room: m.room }, m.id, { status: 'sent' }, m.recipients);
    else if (typeof m.to === 'string') void setStatus(m.to, m.id, { status: m.stored ? 'stored' : 'sent' });
  });
  client.addEventListener('Delivered', (ev) => {
    const m = /** @type {any} */ (/** @type {SignalEvent} */ (ev).message);
    if (typeof m.from === 'string' && typeof m.id === 'string') void setStatus(m.from, m.id, { status: 'delivered', delivered: true });
  });
  client.addEventListener('unsupported', (ev) => {
    // A node without presence or rooms: the contact list shows no states; a user's own
    // SetPresence is told (Join is told by joinRoom).
    const d = /** @type {CustomEvent} */ (ev).detail;
    if (d.type === 'SetPresence') toast(d.text);
  });
  client.addEventListener('Presence', (ev) => onPresence(/** @type {any} */ (/** @type {SignalEvent} */ (ev).message)));
  for (const t of ['Joined', 'MemberJoined', 'MemberLeft', 'Left']) {
    client.addEventListener(t, (ev) => onRoomFrame(/** @type {any} */ (/** @type {SignalEvent} */ (ev).message)));
  }
  client.addEventListener('replaced', () => {
    toast('You signed in with this name somewhere else, so this page was disconnected.');
  });
  client.addEventListener('disconnected', () => {
    toast('You were disconnected by the application.');
  });
  // The history first: messages stored for us are pushed right after the Welcome.
  try {
    app.store = await ChatStore.open(user);
  } catch {
    app.store = null;
    toast('Chat history is not available in this browser (IndexedDB failed); messages will not be kept.');
  }
  try {
    await client.connect();
  } catch (e) {
    app.store?.close();
    app.store = null;
    throw e;
  }
  // Every call uses the ICE servers of the client's latest login (TURN credentials renewed at
  // each reconnect), see RoapPeer.
  // 1:1 calls; each room's group call has its own manager for its own sessions (group-call.js).
  const manager = new PeerManager(client, {
    ...(RELAY_ONLY ? { rtcConfig: { iceTransportPolicy: 'relay' } } : {}),
    owns: (sid) => !isGroupSession(sid),
    reportSessionless: true,
  });
  app.manager = manager;
  manager.addEventListener('peer', (ev) => {
    const { peer, incoming } = /** @type {CustomEvent} */ (ev).detail;
    attachPeer(peer, incoming);
  });
  manager.addEventListener('callerror', (ev) => {
    const d = /** @type {CustomEvent} */ (ev).detail;
    const c = contact(d.remote);
    c.state = 'error';
    c.notice = d.text;
    toast(d.text);
    renderContacts();
    if (app.selected === c.name) renderConversationHead();
  });
  manager.addEventListener('servererror', (ev) => {
    const d = /** @type {CustomEvent} */ (ev).detail;
    toast(d.text);
  });
  client.addEventListener('servererror', (ev) => {
    const m = /** @type {any} */ (ev).message;
    // Errors about a chat message are shown on the message (the sendMessage promise), those
    // about a room request by joinRoom; errors about a call reach the manager; the rest (e.g.
    // a malformed frame) are shown here.
    if (typeof m.id === 'string' || typeof m.room === 'string') return;
    if (!m.from) toast(/** @type {any} */ (ev).text ?? describeError(m.errorType));
  });
  el.login.hidden = true;
  el.app.hidden = false;
  el.presenceState.value = 'online';
  el.presenceNote.value = '';
  showEndpoint();
  showSession();
  showClientState(client.state);
  await loadContacts();
  el.callName.focus();
}

el.logout.addEventListener('click', () => signOut());

function signOut() {
  for (const r of app.rooms.values()) r.call.close();
  app.rooms.clear();
  app.selectedRoom = null;
  app.presence.clear();
  app.outgoing.clear();
  app.seen.clear();
  app.manager?.closeAll();
  app.client?.close();
  app.store?.close();
  app.client = null;
  app.manager = null;
  app.store = null;
  app.contacts.clear();
  app.selected = null;
  el.app.hidden = true;
  el.login.hidden = false;
  showClientState('idle');
  renderContacts();
  renderRooms();
  renderConversation();
}

window.addEventListener('pagehide', () => {
  app.manager?.closeAll();
  for (const r of app.rooms.values()) r.call.close();
});

/** Shows the contacts with history and watches their presence (one Subscribe frame). */
async function loadContacts() {
  if (!app.store) return;
  for (const { contact: name } of await app.store.contacts()) {
    if (!app.contacts.has(name)) {
      app.contacts.set(name, newContact(name, 'ended'));
    }
  }
  watch([...app.contacts.keys()]);
  renderContacts();
}

/** Subscribes to the presence of `names` (the client renews it after a session reset). @param {string[]} names */
function watch(names) {
  const c = app.client;
  const fresh = names.filter((n) => n !== app.user);
  if (!c || fresh.length === 0) return;
  try {
    c.subscribe(fresh);
  } catch (e) {
    toast(e instanceof Error ? e.message : String(e));
  }
}

// ---------------------------------------------------------------- presence

/** @param {{user:string, state:string, note?:string, since?:number}} m */
function onPresence(m) {
  if (typeof m.user !== 'string' || typeof m.state !== 'string') return;
  if (!app.contacts.has(m.user) && !(app.client?.subscriptions.has(m.user) ?? false)) return;
  app.presence.set(m.user, { state: m.state, note: typeof m.note === 'string' ? m.note : '', since: Number(m.since) || Date.now() });
  renderContacts();
  if (app.selected === m.user) renderConversationHead();
}

const PRESENCE_WORDS = { online: 'Online', away: 'Away', busy: 'Busy', offline: 'Offline', invisible: 'Invisible' };

el.presenceForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const state = /** @type {'online'|'away'|'busy'|'invisible'} */ (el.presenceState.value);
  const note = el.presenceNote.value.trim();
  try {
    app.client?.setPresence(state, note || undefined);
    toast(`Your status: ${PRESENCE_WORDS[state]}${note ? ` (${note})` : ''}.`, 'info');
  } catch (e) {
    toast(e instanceof Error ? e.message : String(e));
  }
});

// ---------------------------------------------------------------- contacts and calls

/** @param {string} name @param {Contact['state']} state @returns {Contact} */
function newContact(name, state) {
  return { name, peer: null, ft: null, state, notice: '', unread: 0, transfers: new Map(), oldest: null };
}

/** @param {string} name @returns {Contact} */
function contact(name) {
  let c = app.contacts.get(name);
  if (!c) {
    c = newContact(name, 'ended');
    app.contacts.set(name, c);
    watch([name]);
  }
  return c;
}

el.callForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = el.callName.value.trim();
  const problem = userIdProblem(name);
  if (problem) return toast(problem);
  if (name === app.user) return toast('That is you. Call someone else.');
  el.callName.value = '';
  call(name);
});

el.chatButton.addEventListener('click', () => {
  const name = el.callName.value.trim();
  const problem = userIdProblem(name);
  if (problem) return toast(problem);
  if (name === app.user) return toast('That is you. Write to someone else.');
  el.callName.value = '';
  contact(name);
  select(name);
});

/** @param {string} name */
function call(name) {
  if (!app.manager) return;
  const c = contact(name);
  c.notice = '';
  app.manager.call(name);
  select(name);
}

el.hangup.addEventListener('click', () => {
  if (app.selected) app.manager?.hangup(app.selected);
});
el.recall.addEventListener('click', () => {
  if (app.selected) call(app.selected);
});

/** @param {RoapPeer} peer @param {boolean} incoming */
function attachPeer(peer, incoming) {
  const c = contact(peer.remote);
  c.peer = peer;
  c.state = incoming ? 'connecting' : 'calling';
  c.notice = '';
  // Listen from the start: the first message may come before our side saw both channels open.
  c.ft?.close('replaced by a new call');
  c.ft = attachFiles(c, peer);
  peer.chat.addEventListener('message', (ev) => onChatData(c, ev.data));
  peer.addEventListener('state', (ev) => {
    if (c.peer !== peer) return;
    const s = /** @type {CustomEvent} */ (ev).detail.state;
    if ((s === 'connecting' || s === 'answering') && c.state !== 'connected') c.state = 'connecting';
    renderContacts();
    if (app.selected === c.name) renderConversationHead();
  });
  peer.addEventListener('open', () => {
    if (c.peer !== peer) return;
    c.state = 'connected';
    renderContacts();
    if (app.selected === c.name) renderConversation();
  });
  peer.addEventListener('closed', (ev) => {
    if (c.peer !== peer) return;
    const d = /** @type {CustomEvent} */ (ev).detail;
    c.peer = null;
    c.ft?.close(d.by === 'peer' ? `${c.name} hung up` : 'the call ended');
    c.ft = null;
    if (d.quiet) return; // replaced by another call with the same person
    c.state = d.by === 'error' ? 'error' : 'ended';
    if (d.by === 'peer') c.notice = `${c.name} hung up.`;
    else if (d.by === 'error') c.notice = d.text ?? d.reason;
    renderContacts();
    if (app.selected === c.name) renderConversation();
  });
  if (incoming && (!app.selected || !app.contacts.get(app.selected)?.peer)) select(c.name);
  renderContacts();
  if (app.selected === c.name) renderConversation();
}

// ---------------------------------------------------------------- chat

/**
 * Text over the call's data channel (older pages chat this way; this page sends through the
 * cluster and still reads these).
 * @typedef {{kind:'text', id:string, text:string, ts:number} | {kind:'ack', id:string}} ChatWire
 */

/** @param {Contact} c @param {unknown} data */
async function onChatData(c, data) {
  if (typeof data !== 'string' || data.length > 64 * 1024) return;
  /** @type {any} */
  let m;
  try {
    m = JSON.parse(data);
  } catch {
    return;
  }
  if (m && m.kind === 'text' && typeof m.id === 'string' && typeof m.text === 'string' && typeof m.ts === 'number') {
    try {
      c.peer?.chat.send(JSON.stringify({ kind: 'ack', id: m.id }));
    } catch {
      // channel closing: the sender sees no tick
    }
    await received({ id: m.id, contact: c.name, from: c.name, dir: 'in', text: m.text, ts: m.ts });
  } else if (m && m.kind === 'ack' && typeof m.id === 'string') {
    await setStatus(c.name, m.id, { status: 'delivered', delivered: true });
  }
}

/** The key of a message in `app.outgoing` / `app.seen`. @param {Target} t @param {string} from @param {string} id */
function msgKey(t, from, id) {
  return `${typeof t === 'string' ? `u\n${t}` : `r\n${t.room}`}\n${from}\n${id}`;
}

/**
 * A chat message from the cluster (contract sections 6, 8): stored and shown once, however
 * often it comes (at-least-once delivery); room call announcements go to the room's call.
 * @param {any} m
 */
async function onIncoming(m) {
  if (typeof m.from !== 'string' || typeof m.id !== 'string' || typeof m.body !== 'string') return;
  const ts = typeof m.ts === 'number' ? m.ts : Date.now();
  if (typeof m.room === 'string') {
    const r = app.rooms.get(m.room);
    if (!r) return; // a room we left
    if (m.contentType === CALL_CONTENT_TYPE) {
      const kind = parseAnnouncement(m.body);
      if (kind) r.call.onAnnouncement(m.from, kind);
      return;
    }
    await received({ id: m.id, room: m.room, from: m.from, dir: 'in', text: m.body, ts });
    return;
  }
  await received({ id: m.id, contact: m.from, from: m.from, dir: 'in', text: m.body, ts, delayed: m.delayed === true });
}

/**
 * Stores a received message unless it is a duplicate, and shows it.
 * @param {NewRecord & {from:string}} rec
 */
async function received(rec) {
  const target = rec.room !== undefined ? { room: rec.room } : /** @type {string} */ (rec.contact);
  /** @type {ChatRecord | null} */
  let stored;
  if (app.store) {
    stored = await app.store.addIncoming(rec);
  } else {
    const k = msgKey(target, rec.from, rec.id);
    stored = app.seen.has(k) ? null : recordOf(rec);
    app.seen.add(k);
    if (app.seen.size > 5000) app.seen.delete(/** @type {string} */ (app.seen.values().next().value));
  }
  if (!stored) {
    app.duplicates += 1;
    return;
  }
  if (typeof target === 'string') {
    const c = contact(target);
    if (app.selected === c.name) appendMessage(stored);
    else if (app.selected === null && app.selectedRoom === null) select(c.name); // shows it from the history
    else {
      c.unread += 1;
      renderContacts();
    }
  } else {
    const r = app.rooms.get(target.room);
    if (app.selectedRoom === target.room) appendMessage(stored, el.roomMessageList, el.roomMessages);
    else if (r) {
      r.unread += 1;
      renderRooms();
    }
  }
}

/** A record as the store would keep it (used without IndexedDB). @param {NewRecord} rec @returns {ChatRecord} */
function recordOf(rec) {
  const from = rec.from ?? (rec.dir === 'out' ? app.user : (rec.contact ?? ''));
  const conv = rec.room !== undefined ? `r\n${rec.room}` : `u\n${rec.contact}`;
  return {
    status: rec.dir === 'in' ? 'received' : 'sending',
    ...rec,
    owner: app.user,
    conv,
    from,
    msgId: rec.id,
    id: `${from}\n${rec.id}`,
    key: `${app.user}\n${conv}\n${from}\n${rec.id}`,
  };
}

/**
 * Sends `text` to a contact or a room through the cluster: stored as `sending`, then
 * `stored` / `sent` / `delivered` or `failed` (with a retry that reuses the id).
 * @param {Target} target @param {string} text
 */
async function sendChat(target, text) {
  const id = newMessageID();
  /** @type {NewRecord} */
  const rec =
    typeof target === 'string'
      ? { id, contact: target, dir: 'out', text, ts: Date.now(), status: 'sending', delivered: false }
      : { id, room: target.room, dir: 'out', text, ts: Date.now(), status: 'sending' };
  const stored = app.store ? await app.store.add(rec) : recordOf(rec);
  remember(stored);
  // Hand it to the client first (synchronously, so it is pending), then show it.
  const sent = deliver(target, stored);
  showRecord(target, stored);
  await sent;
}

/** Keeps a sent record in memory (bounded) for retries. @param {ChatRecord} r */
function remember(r) {
  const target = r.room !== undefined ? { room: r.room } : /** @type {string} */ (r.contact);
  app.outgoing.set(msgKey(target, r.from, r.msgId), r);
  if (app.outgoing.size > 1000) app.outgoing.delete(/** @type {string} */ (app.outgoing.keys().next().value));
}

/**
 * Hands a sent record to the client; its answer sets the status (Accepted through the
 * `Accepted` listener, an Error or a timeout here).
 * @param {Target} target @param {ChatRecord} r
 */
async function deliver(target, r) {
  const client = app.client;
  if (!client) return;
  try {
    if (typeof target === 'string') await client.sendMessage(target, r.msgId, r.text);
    else await client.sendRoomMessage(target.room, r.msgId, r.text);
  } catch (e) {
    await setStatus(target, r.msgId, { status: 'failed', error: e instanceof Error ? e.message : String(e) });
  }
}

/** Sends a failed message again, with the same id (safe: the node deduplicates). @param {Target} target @param {string} id */
async function retry(target, id) {
  const r = app.store ? await app.store.get(target, app.user, id) : (app.outgoing.get(msgKey(target, app.user, id)) ?? null);
  if (!r || !(r.status === 'failed' || (r.status === 'sending' && !inFlight(r)))) return;
  const sent = deliver(target, r);
  await setStatus(target, id, { status: 'sending' });
  await sent;
}

/** Whether a sent message is waiting for the node's answer in this page. @param {ChatRecord} r */
function inFlight(r) {
  return app.client?.pendingChat.has(r.msgId) ?? false;
}

/**
 * Changes the status of a message we sent, in the store and on the page.
 * @param {Target} target @param {string} id
 * @param {Partial<Pick<ChatRecord, 'status'|'delivered'|'error'>>} patch
 * @param {number} [recipients] a room message's recipients (shown, not stored)
 * @returns {Promise<ChatRecord | null>}
 */
async function setStatus(target, id, patch, recipients) {
  const k = msgKey(target, app.user, id);
  let next = app.store ? await app.store.update(target, app.user, id, patch) : null;
  const mem = app.outgoing.get(k);
  if (!app.store && mem) {
    next = { ...mem, ...patch };
    if (mem.status === 'delivered' && patch.status !== 'delivered') next.status = 'delivered';
  }
  if (!next) return null;
  if (mem) app.outgoing.set(k, next);
  showRecord(target, next, recipients);
  return next;
}

/**
 * Shows (or updates) a record in its conversation if that is on screen.
 * @param {Target} target @param {ChatRecord} r @param {number} [recipients]
 */
function showRecord(target, r, recipients) {
  const onScreen = typeof target === 'string' ? app.selected === target : app.selectedRoom === target.room;
  if (!onScreen) return;
  const list = typeof target === 'string' ? el.messageList : el.roomMessageList;
  const old = list.querySelector(`[data-msg-id="${CSS.escape(r.msgId)}"][data-from="${CSS.escape(r.from)}"]`);
  const li = messageItem(r, recipients);
  if (old) old.replaceWith(li);
  else appendMessage(r, list, typeof target === 'string' ? el.messages : el.roomMessages);
}

el.composer.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = el.chatInput.value;
  if (!text.trim() || !app.selected) return;
  el.chatInput.value = '';
  await sendChat(app.selected, text);
});

/** What a sent message's status says. @param {ChatRecord} r @param {number} [recipients] */
function statusWords(r, recipients) {
  switch (r.status) {
    case 'sending':
      return 'sending…';
    case 'stored':
      return `will be delivered when ${r.contact} is online`;
    case 'sent':
      return r.room !== undefined && recipients !== undefined ? `sent to ${recipients}` : 'sent';
    case 'delivered':
      return '✓';
    case 'failed':
      return r.error ?? 'not sent';
    default:
      return '';
  }
}

/** @param {ChatRecord} r @param {number} [recipients] @returns {HTMLLIElement} */
function messageItem(r, recipients) {
  if (r.dir === 'out' && r.status === 'sending' && !inFlight(r)) {
    // From an earlier page (closed before the node answered): not known to be sent.
    r = { ...r, status: 'failed', error: 'Not sent: the page was closed before the server answered.' };
  }
  const li = document.createElement('li');
  li.className = `msg ${r.dir}`;
  li.dataset.msgId = r.msgId;
  li.dataset.from = r.from;
  li.dataset.dir = r.dir;
  if (r.status) li.dataset.status = r.status;
  if (r.delayed) li.dataset.delayed = 'true';
  if (r.delivered || r.status === 'delivered') li.dataset.delivered = 'true';
  if (r.room !== undefined && r.dir === 'in') {
    const from = document.createElement('span');
    from.className = 'from';
    from.textContent = r.from;
    li.append(from);
  }
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = r.text;
  const meta = document.createElement('span');
  meta.className = 'meta';
  const words = r.dir === 'out' ? statusWords(r, recipients) : r.delayed ? 'sent while you were away' : '';
  meta.textContent = formatTime(r.ts) + (words === '✓' ? ' ✓' : words ? ` · ${words}` : '');
  li.append(body, meta);
  if (r.dir === 'out' && r.status === 'failed') {
    const b = document.createElement('button');
    b.className = 'retry';
    b.type = 'button';
    b.textContent = 'Retry';
    const target = r.room !== undefined ? { room: r.room } : /** @type {string} */ (r.contact);
    b.addEventListener('click', () => void retry(target, r.msgId));
    meta.append(b);
  }
  return li;
}

/**
 * @param {ChatRecord} r
 * @param {HTMLElement} [list] @param {HTMLElement} [box] the scrolling element
 */
function appendMessage(r, list = el.messageList, box = el.messages) {
  if (list.querySelector(`[data-msg-id="${CSS.escape(r.msgId)}"][data-from="${CSS.escape(r.from)}"]`)) return;
  const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 40;
  list.append(messageItem(r));
  if (stick || r.dir === 'out') box.scrollTop = box.scrollHeight;
}

/** Loads the next older page of the selected conversation. */
async function loadOlder() {
  const name = app.selected;
  if (!name || !app.store) return;
  const c = contact(name);
  const page = await app.store.page(name, { before: c.oldest ?? undefined, limit: PAGE });
  if (app.selected !== name) return;
  const first = el.messageList.firstChild;
  for (const r of page) {
    if (!el.messageList.querySelector(`[data-msg-id="${CSS.escape(r.msgId)}"][data-from="${CSS.escape(r.from)}"]`)) {
      el.messageList.insertBefore(messageItem(r), el.messageList.firstChild);
    }
  }
  if (page.length > 0) c.oldest = { ts: page[page.length - 1].ts, id: page[page.length - 1].id };
  el.older.hidden = page.length < PAGE;
  if (!first) el.messages.scrollTop = el.messages.scrollHeight;
}

el.older.addEventListener('click', () => void loadOlder());

// ---------------------------------------------------------------- files

/** @param {Contact} c @param {RoapPeer} peer @returns {FileTransfer} */
function attachFiles(c, peer) {
  const ft = new FileTransfer(/** @type {any} */ (peer.files));
  const update = (/** @type {Event} */ ev) => {
    const info = /** @type {CustomEvent} */ (ev).detail;
    c.transfers.set(info.fileID, info);
    if (app.selected === c.name) renderTransfer(c, info);
  };
  for (const t of ['transfer', 'progress', 'done', 'cancelled', 'failed']) ft.addEventListener(t, update);
  ft.addEventListener('failed', (ev) => {
    const d = /** @type {CustomEvent} */ (ev).detail;
    toast(`File "${d.name}" failed: ${d.reason}.`);
  });
  ft.addEventListener('cancelled', (ev) => {
    const d = /** @type {CustomEvent} */ (ev).detail;
    if (d.by === 'peer') toast(`${c.name} cancelled "${d.name}".`, 'info');
  });
  return ft;
}

el.fileInput.addEventListener('change', async () => {
  const files = [...(el.fileInput.files ?? [])];
  el.fileInput.value = '';
  if (!app.selected) return;
  const c = contact(app.selected);
  if (!c.ft) return toast(`Not connected to ${c.name}. Call them first.`);
  for (const f of files) {
    try {
      await c.ft.sendFile(f);
    } catch (e) {
      toast(`Could not send "${f.name}": ${e instanceof Error ? e.message : e}`);
    }
  }
});

const STATE_WORDS = { active: '', done: '', cancelled: 'Cancelled', failed: 'Failed' };

/** @param {Contact} c @param {TransferInfo} info */
function renderTransfer(c, info) {
  let li = /** @type {HTMLLIElement | null} */ (el.transfers.querySelector(`[data-file-id="${CSS.escape(info.fileID)}"]`));
  if (!li) {
    li = document.createElement('li');
    li.className = 'transfer';
    li.dataset.fileId = info.fileID;
    li.dataset.direction = info.direction;
    li.dataset.name = info.name;
    li.innerHTML =
      '<span class="fname"></span><span class="fmeta"></span><div class="actions"><button class="secondary cancel">Cancel</button></div><progress max="1" value="0"></progress>';
    /** @type {HTMLElement} */ (li.querySelector('.fname')).textContent = `${info.direction === 'send' ? '↑' : '↓'} ${info.name}`;
    /** @type {HTMLButtonElement} */ (li.querySelector('.cancel')).addEventListener('click', () => c.ft?.cancel(info.fileID));
    el.transfers.prepend(li);
  }
  li.dataset.state = info.state;
  li.dataset.bytes = String(info.bytes);
  li.dataset.size = String(info.size);
  li.dataset.sha256 = info.sha256;
  if (info.verifiedSha256) li.dataset.verifiedSha256 = info.verifiedSha256;
  if (info.by) li.dataset.by = info.by;
  const progress = /** @type {HTMLProgressElement} */ (li.querySelector('progress'));
  progress.value = info.size === 0 ? (info.state === 'done' ? 1 : 0) : info.bytes / info.size;
  const meta = /** @type {HTMLElement} */ (li.querySelector('.fmeta'));
  const actions = /** @type {HTMLElement} */ (li.querySelector('.actions'));
  const pct = info.size === 0 ? 100 : Math.floor((100 * info.bytes) / info.size);
  if (info.state === 'active') {
    meta.textContent = `${formatBytes(info.bytes)} of ${formatBytes(info.size)} · ${pct}%`;
    return;
  }
  actions.innerHTML = '';
  const status = document.createElement('span');
  if (info.state === 'done') {
    status.className = 'status-done';
    if (info.direction === 'receive' && info.blob) {
      meta.textContent = `${formatBytes(info.size)} · SHA-256 verified`;
      const a = document.createElement('a');
      a.href = URL.createObjectURL(info.blob);
      a.download = info.name;
      a.textContent = 'Save';
      actions.append(a);
      return;
    }
    meta.textContent = `${formatBytes(info.size)} · sent`;
    status.textContent = 'Sent';
  } else {
    status.className = 'status-bad';
    const who = info.by === 'peer' ? `by ${c.name}` : info.by === 'local' ? 'by you' : '';
    meta.textContent = `${formatBytes(info.bytes)} of ${formatBytes(info.size)}${info.reason ? ` · ${info.reason}` : ''}`;
    status.textContent = `${STATE_WORDS[info.state]} ${who}`.trim();
  }
  actions.append(status);
}

// ---------------------------------------------------------------- rendering

const BADGE = {
  calling: 'Calling…',
  connecting: 'Connecting…',
  connected: 'In a call',
  ended: '',
  error: 'Error',
};

function renderContacts() {
  el.contacts.innerHTML = '';
  el.contactsEmpty.hidden = app.contacts.size > 0;
  for (const c of app.contacts.values()) {
    const li = document.createElement('li');
    li.dataset.contact = c.name;
    li.dataset.state = c.state;
    if (c.name === app.selected) li.className = 'selected';
    const who = document.createElement('span');
    who.className = 'who';
    const p = app.presence.get(c.name);
    const state = p?.state ?? 'unknown';
    li.dataset.presence = state;
    const dot = document.createElement('span');
    dot.className = 'presence-dot';
    dot.dataset.presence = state;
    dot.title = p ? PRESENCE_WORDS[/** @type {keyof typeof PRESENCE_WORDS} */ (state)] ?? state : 'Status unknown';
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = c.name;
    who.append(dot, name);
    if (p?.note) {
      const note = document.createElement('span');
      note.className = 'pnote';
      note.textContent = p.note;
      who.append(note);
    }
    const right = document.createElement('span');
    if (c.unread > 0) {
      const u = document.createElement('span');
      u.className = 'unread';
      u.textContent = String(c.unread);
      right.append(u, ' ');
    }
    const badge = document.createElement('span');
    badge.className = `badge ${c.state}`;
    badge.textContent = c.state === 'ended' && c.notice ? 'Ended' : BADGE[c.state];
    if (badge.textContent) right.append(badge);
    li.append(who, right);
    li.addEventListener('click', () => select(c.name));
    el.contacts.append(li);
  }
}

/** @param {string} name */
function select(name) {
  const c = contact(name);
  const changed = app.selected !== name;
  app.selected = name;
  if (app.selectedRoom !== null) {
    app.selectedRoom = null;
    renderRooms();
  }
  c.unread = 0;
  if (changed) {
    c.oldest = null;
    el.messageList.innerHTML = '';
    el.transfers.innerHTML = '';
    void loadOlder();
  }
  renderContacts();
  renderConversation();
}

function renderConversationHead() {
  const c = app.selected ? app.contacts.get(app.selected) : undefined;
  if (!c) return;
  el.convName.textContent = c.name;
  el.conv.dataset.state = c.state;
  const words = {
    calling: `Calling ${c.name}…`,
    connecting: 'Setting up a direct connection…',
    connected: 'Connected peer to peer',
    ended: 'Not connected',
    error: 'Not connected',
  };
  const p = app.presence.get(c.name);
  const presence = p ? `${PRESENCE_WORDS[/** @type {keyof typeof PRESENCE_WORDS} */ (p.state)] ?? p.state}${p.note ? ` — ${p.note}` : ''}` : '';
  el.convState.textContent = c.state === 'ended' || c.state === 'error' ? presence || words[c.state] : words[c.state];
  el.convState.dataset.presence = p?.state ?? 'unknown';
  el.convNotice.hidden = !c.notice;
  el.convNotice.textContent = c.notice;
  const live = c.peer !== null;
  el.hangup.hidden = !live;
  el.recall.hidden = live;
  // Chat goes through the cluster (also to someone offline); files need the call.
  const files = c.state === 'connected';
  el.chatInput.disabled = false;
  el.sendButton.disabled = false;
  el.fileInput.disabled = !files;
  el.composer.classList.toggle('disabled', !files);
  el.chatInput.placeholder = 'Write a message…';
}

function renderConversation() {
  const room = app.selectedRoom ? app.rooms.get(app.selectedRoom) : undefined;
  const c = !room && app.selected ? app.contacts.get(app.selected) : undefined;
  el.convEmpty.hidden = !!c || !!room;
  el.conv.hidden = !c;
  el.roomView.hidden = !room;
  if (room) {
    renderRoomView();
    return;
  }
  if (!c) return;
  renderConversationHead();
  for (const info of c.transfers.values()) renderTransfer(c, info);
  el.chatInput.focus();
}

// ---------------------------------------------------------------- rooms and group calls

/** @param {string} name @returns {Room} */
function room(name) {
  let r = app.rooms.get(name);
  if (!r) {
    const client = /** @type {SignalClient} */ (app.client);
    const call = new GroupCall({
      client,
      room: name,
      user: app.user,
      rtcConfig: RELAY_ONLY ? { iceTransportPolicy: 'relay' } : undefined,
      isMember: (u) => app.rooms.get(name)?.members.has(u) ?? false,
    });
    /** @type {Room} */
    const made = { name, members: new Set(), joined: false, unread: 0, call };
    call.addEventListener('change', () => {
      if (app.selectedRoom === name) renderRoomView();
    });
    call.addEventListener('error', (ev) => toast(/** @type {CustomEvent} */ (ev).detail.text));
    app.rooms.set(name, made);
    r = made;
  }
  return r;
}

el.roomForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = el.roomName.value.trim();
  const problem = userIdProblem(name).replace('Names', 'Room names').replace('a name', 'a room name');
  if (problem) return toast(problem);
  el.roomName.value = '';
  void joinRoom(name);
});

/** @param {string} name */
async function joinRoom(name) {
  const client = app.client;
  if (!client) return;
  const r = room(name);
  selectRoom(name);
  try {
    await client.join(name);
  } catch (e) {
    toast(e instanceof Error ? e.message : String(e));
    if (!r.joined) {
      r.call.close();
      app.rooms.delete(name);
      if (app.selectedRoom === name) app.selectedRoom = null;
      renderRooms();
      renderConversation();
    }
  }
}

/** @param {any} m a Joined, MemberJoined, MemberLeft or Left frame */
function onRoomFrame(m) {
  if (typeof m.room !== 'string') return;
  const r = app.rooms.get(m.room);
  if (!r) return;
  if (m.type === 'Joined' && Array.isArray(m.members)) {
    r.joined = true;
    r.members = new Set(m.members.filter((/** @type {unknown} */ u) => typeof u === 'string'));
    // Anyone in the call who is no longer in the room is gone.
    for (const p of [...r.call.participants]) if (!r.members.has(p)) r.call.memberLeft(p);
  } else if (m.type === 'MemberJoined' && typeof m.user === 'string') {
    r.members.add(m.user);
  } else if (m.type === 'MemberLeft' && typeof m.user === 'string') {
    r.members.delete(m.user);
    r.call.memberLeft(m.user);
  } else if (m.type === 'Left') {
    r.call.close();
    app.rooms.delete(m.room);
    if (app.selectedRoom === m.room) app.selectedRoom = null;
    renderRooms();
    renderConversation();
    return;
  }
  renderRooms();
  if (app.selectedRoom === m.room) renderRoomView();
}

/** @param {string} name */
function selectRoom(name) {
  const r = app.rooms.get(name);
  if (!r) return;
  const changed = app.selectedRoom !== name;
  app.selectedRoom = name;
  app.selected = null;
  r.unread = 0;
  if (changed) {
    el.roomMessageList.innerHTML = '';
    void loadRoomHistory(name);
  }
  renderRooms();
  renderContacts();
  renderConversation();
}

/** Shows the newest page of a room's stored chat. @param {string} name */
async function loadRoomHistory(name) {
  if (!app.store) return;
  const page = await app.store.page({ room: name }, { limit: PAGE });
  if (app.selectedRoom !== name) return;
  for (const r of page) {
    if (!el.roomMessageList.querySelector(`[data-msg-id="${CSS.escape(r.msgId)}"][data-from="${CSS.escape(r.from)}"]`)) {
      el.roomMessageList.insertBefore(messageItem(r), el.roomMessageList.firstChild);
    }
  }
  el.roomMessages.scrollTop = el.roomMessages.scrollHeight;
}

function renderRooms() {
  el.rooms.innerHTML = '';
  for (const r of app.rooms.values()) {
    const li = document.createElement('li');
    li.dataset.room = r.name;
    li.dataset.joined = String(r.joined);
    if (r.name === app.selectedRoom) li.className = 'selected';
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = `# ${r.name}`;
    const right = document.createElement('span');
    right.className = 'muted';
    right.textContent = `${r.unread > 0 ? `${r.unread} new · ` : ''}${r.members.size}${r.call.active ? ' · in call' : ''}`;
    li.append(name, right);
    li.addEventListener('click', () => selectRoom(r.name));
    el.rooms.append(li);
  }
}

function renderRoomView() {
  const r = app.selectedRoom ? app.rooms.get(app.selectedRoom) : undefined;
  if (!r) return;
  el.roomView.dataset.room = r.name;
  el.roomView.dataset.joined = String(r.joined);
  el.roomTitle.textContent = `# ${r.name}`;
  el.roomState.textContent = r.joined ? `${r.members.size} ${r.members.size === 1 ? 'member' : 'members'}` : 'Joining…';
  el.roomMembers.innerHTML = '';
  for (const m of [...r.members].sort()) {
    const li = document.createElement('li');
    li.dataset.member = m;
    li.textContent = m === app.user ? `${m} (you)` : m;
    if (r.call.participants.has(m) || (m === app.user && r.call.active)) li.dataset.inCall = 'true';
    el.roomMembers.append(li);
  }
  el.callJoin.hidden = r.call.active;
  el.callJoin.disabled = !r.joined;
  el.callLeave.hidden = !r.call.active;
  el.roomCall.hidden = r.call.participants.size === 0 && !r.call.active;
  el.callPeers.innerHTML = '';
  for (const p of [...r.call.participants].sort()) {
    const li = document.createElement('li');
    li.dataset.peer = p;
    const peer = r.call.peer(p);
    li.dataset.state = peer ? peer.state : 'none';
    const open = !!peer && peer.chat.readyState === 'open' && peer.files.readyState === 'open';
    li.dataset.open = String(open);
    li.textContent = `${p}${open ? ' · connected' : peer ? ' · connecting…' : ''}`;
    el.callPeers.append(li);
  }
}

el.roomComposer.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = el.roomInput.value;
  const name = app.selectedRoom;
  if (!text.trim() || !name) return;
  el.roomInput.value = '';
  await sendChat({ room: name }, text);
});

el.roomLeave.addEventListener('click', async () => {
  const name = app.selectedRoom;
  const client = app.client;
  if (!name || !client) return;
  app.rooms.get(name)?.call.leave();
  try {
    await client.leave(name);
  } catch (e) {
    toast(e instanceof Error ? e.message : String(e));
  }
  // Left, or the node says we were not in it any more: either way it is gone here.
  const r = app.rooms.get(name);
  if (r) onRoomFrame({ type: 'Left', room: name });
});

el.callJoin.addEventListener('click', () => {
  const r = app.selectedRoom ? app.rooms.get(app.selectedRoom) : undefined;
  if (!r) return;
  try {
    r.call.join();
  } catch (e) {
    toast(e instanceof Error ? e.message : String(e));
  }
  renderRooms();
  renderRoomView();
});

el.callLeave.addEventListener('click', () => {
  const r = app.selectedRoom ? app.rooms.get(app.selectedRoom) : undefined;
  if (!r) return;
  r.call.leave();
  renderRooms();
  renderRoomView();
});

renderContacts();

// A name in the URL (`?user=alice`) fills the form; `&autologin=1` signs in at once.
const preset = params.get('user');
if (preset) {
  el.loginName.value = preset;
  if (params.get('autologin') === '1') el.loginForm.requestSubmit();
}
