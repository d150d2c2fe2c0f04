// @ts-check
/**
 * @file The demo IM page: sign in at central (`location.origin`), show the assigned node, call
 * people by name, chat (history in IndexedDB) and send files with progress and cancel, and show
 * every error in plain words. `?test=1` asks for the (fake) microphone once before the first
 * peer connection so that headless Chromium gathers loopback ICE candidates.
 */

import { SignalClient, describeError } from './signal-client.js';
import { PeerManager } from './roap-peer.js';
import { FileTransfer } from './file-transfer.js';
import { ChatStore } from './chat-store.js';

/** @typedef {import('./roap-peer.js').RoapPeer} RoapPeer */
/** @typedef {import('./file-transfer.js').TransferInfo} TransferInfo */
/** @typedef {import('./chat-store.js').ChatRecord} ChatRecord */

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
};
Object.assign(window, { demo: app });

// ---------------------------------------------------------------- small helpers

/** @param {string} text @param {'error'|'info'} [kind] */
function toast(text, kind = 'error') {
  if (kind === 'error') app.errors.push(text);
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
    // The node could not resume the session: frames sent to us meanwhile may be lost. This is
    // where the page would subscribe and join again (it has no subscriptions or rooms yet);
    // calls still being set up may not complete and can be started again.
    toast(`Reconnected via ${/** @type {CustomEvent} */ (ev).detail.node} with a new session: calls being set up may need to be started again.`, 'info');
  });
  client.addEventListener('replaced', () => {
    toast('You signed in with this name somewhere else, so this page was disconnected.');
  });
  client.addEventListener('disconnected', () => {
    toast('You were disconnected by the application.');
  });
  await client.connect();
  try {
    app.store = await ChatStore.open(user);
  } catch {
    app.store = null;
    toast('Chat history is not available in this browser (IndexedDB failed); messages will not be kept.');
  }
  // Every call uses the ICE servers of the client's latest login (TURN credentials renewed at
  // each reconnect), see RoapPeer.
  const manager = new PeerManager(client, RELAY_ONLY ? { rtcConfig: { iceTransportPolicy: 'relay' } } : {});
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
    // Errors about a call reach the manager; the rest (e.g. a malformed frame) are shown here.
    if (!m.from) toast(/** @type {any} */ (ev).text ?? describeError(m.errorType));
  });
  el.login.hidden = true;
  el.app.hidden = false;
  showEndpoint();
  showSession();
  showClientState(client.state);
  await loadContacts();
  el.callName.focus();
}

el.logout.addEventListener('click', () => signOut());

function signOut() {
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
  renderConversation();
}

window.addEventListener('pagehide', () => app.manager?.closeAll());

async function loadContacts() {
  if (!app.store) return;
  for (const { contact: name } of await app.store.contacts()) {
    if (!app.contacts.has(name)) {
      app.contacts.set(name, newContact(name, 'ended'));
    }
  }
  renderContacts();
}

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
    const rec = { id: m.id, contact: c.name, dir: /** @type {'in'} */ ('in'), text: m.text, ts: m.ts };
    try {
      c.peer?.chat.send(JSON.stringify({ kind: 'ack', id: m.id }));
    } catch {
      // channel closing: the sender sees no tick
    }
    const stored = app.store ? await app.store.add(rec) : { ...rec, owner: app.user, msgId: rec.id };
    if (app.selected === c.name) appendMessage(stored);
    else {
      c.unread += 1;
      renderContacts();
    }
  } else if (m && m.kind === 'ack' && typeof m.id === 'string') {
    await app.store?.markDelivered(c.name, m.id);
    const li = el.messageList.querySelector(`[data-msg-id="${CSS.escape(m.id)}"]`);
    if (li) {
      li.setAttribute('data-delivered', 'true');
      const meta = li.querySelector('.meta');
      if (meta && !meta.textContent?.endsWith('✓')) meta.textContent += ' ✓';
    }
  }
}

el.composer.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = el.chatInput.value;
  if (!text.trim() || !app.selected) return;
  const c = contact(app.selected);
  if (!c.peer || c.peer.chat.readyState !== 'open') return toast(`Not connected to ${c.name}. Call them first.`);
  /** @type {ChatWire} */
  const m = { kind: 'text', id: newMessageID(), text, ts: Date.now() };
  try {
    c.peer.chat.send(JSON.stringify(m));
  } catch (e) {
    return toast(`Could not send the message: ${e instanceof Error ? e.message : e}`);
  }
  el.chatInput.value = '';
  const rec = { id: m.id, contact: c.name, dir: /** @type {'out'} */ ('out'), text, ts: m.ts, delivered: false };
  const stored = app.store ? await app.store.add(rec) : { ...rec, owner: app.user, msgId: rec.id };
  if (app.selected === c.name) appendMessage(stored);
});

/** @param {ChatRecord} r @returns {HTMLLIElement} */
function messageItem(r) {
  const li = document.createElement('li');
  li.className = `msg ${r.dir}`;
  li.dataset.msgId = r.msgId;
  li.dataset.dir = r.dir;
  if (r.delivered) li.dataset.delivered = 'true';
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = r.text;
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.textContent = formatTime(r.ts) + (r.dir === 'out' && r.delivered ? ' ✓' : '');
  li.append(body, meta);
  return li;
}

/** @param {ChatRecord} r */
function appendMessage(r) {
  if (el.messageList.querySelector(`[data-msg-id="${CSS.escape(r.msgId)}"]`)) return;
  const stick = el.messages.scrollTop + el.messages.clientHeight >= el.messages.scrollHeight - 40;
  el.messageList.append(messageItem(r));
  if (stick || r.dir === 'out') el.messages.scrollTop = el.messages.scrollHeight;
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
    if (!el.messageList.querySelector(`[data-msg-id="${CSS.escape(r.msgId)}"]`)) {
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
  connected: 'Connected',
  ended: 'Offline',
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
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = c.name;
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
    right.append(badge);
    li.append(name, right);
    li.addEventListener('click', () => select(c.name));
    el.contacts.append(li);
  }
}

/** @param {string} name */
function select(name) {
  const c = contact(name);
  const changed = app.selected !== name;
  app.selected = name;
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
  el.convState.textContent = words[c.state];
  el.convNotice.hidden = !c.notice;
  el.convNotice.textContent = c.notice;
  const live = c.peer !== null;
  el.hangup.hidden = !live;
  el.recall.hidden = live;
  const ready = c.state === 'connected';
  el.chatInput.disabled = !ready;
  el.sendButton.disabled = !ready;
  el.fileInput.disabled = !ready;
  el.composer.classList.toggle('disabled', !ready);
  el.chatInput.placeholder = ready ? 'Write a message…' : `Call ${c.name} to chat`;
}

function renderConversation() {
  const c = app.selected ? app.contacts.get(app.selected) : undefined;
  el.convEmpty.hidden = !!c;
  el.conv.hidden = !c;
  if (!c) return;
  renderConversationHead();
  for (const info of c.transfers.values()) renderTransfer(c, info);
  if (c.state === 'connected') el.chatInput.focus();
}

renderContacts();

// A name in the URL (`?user=alice`) fills the form; `&autologin=1` signs in at once.
const preset = params.get('user');
if (preset) {
  el.loginName.value = preset;
  if (params.get('autologin') === '1') el.loginForm.requestSubmit();
}
