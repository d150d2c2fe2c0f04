// Tests of the chat, presence and room parts of web/signal-client.js and of web/chat-store.js
// in real headless Chromium (real WebSocket, real IndexedDB) against tests/ws-fixture.js,
// which lets a test answer with any frame: `sendMessage` settled by the Accepted or the Error
// that carries its id (and not by another one's), a timeout, unanswered messages sent again
// with the same id after a reconnect, the Ack of a Message held until the page stored it
// (`waitUntil`), presence/subscriptions/rooms renewed after a refused resume, a node without
// presence detected once; ChatStore dropping a duplicate (from, id) and upgrading a version-1
// database. Pure helpers (chat error texts, the group call's rules) are checked in Node.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Fixture } from './ws-fixture.js';
import { describeChatError } from '../signal-client.js';
import { shouldOffer, groupSessionPrefix, isGroupSession, parseAnnouncement } from '../group-call.js';

const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const skip = existsSync(CHROMIUM_BIN) ? false : `chromium not found at ${CHROMIUM_BIN} (set CHROMIUM_BIN)`;
if (skip && process.env.REQUIRE_BROWSER === '1') throw new Error(`cannot run the browser tests: ${skip}`);
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'];

test('chat errors have plain words that say the message was not sent', () => {
  assert.equal(describeChatError('MAILBOXFULL', { peer: 'bob' }), "Not sent: bob's mailbox is full (too many messages waiting for them).");
  assert.equal(describeChatError('TOOLARGE'), 'Not sent: the message is too long.');
  assert.match(describeChatError('UNAVAILABLE', { peer: 'bob' }), /^Not sent: the server could not store the message for bob just now/);
  assert.match(describeChatError('RATELIMITED'), /^Not sent: too many messages too quickly/);
  assert.equal(describeChatError('NOTMEMBER', { room: 'r1' }), 'Not sent: you are not in room r1.');
  for (const t of ['MAILBOXFULL', 'TOOLARGE', 'UNAVAILABLE', 'RATELIMITED', 'NOTMEMBER', 'BADMESSAGE', 'TIMEOUT', 'OFFLINE', 'TOOMANY', 'ROOMFULL']) {
    const text = describeChatError(t, { peer: 'bob' });
    assert.ok(text.startsWith('Not sent') && !text.includes(t) && text.endsWith('.'), `${t}: ${text}`);
  }
});

test('group call rules: one side offers, session ids are per room, announcements parse', () => {
  assert.equal(shouldOffer('alice', 'bob'), true);
  assert.equal(shouldOffer('bob', 'alice'), false);
  for (const [a, b] of [['a', 'b'], ['carol', 'bob'], ['x1', 'x10']]) assert.notEqual(shouldOffer(a, b), shouldOffer(b, a));
  assert.notEqual(groupSessionPrefix('a'), groupSessionPrefix('a:b').slice(0, groupSessionPrefix('a').length));
  assert.equal(isGroupSession(`${groupSessionPrefix('r1')}abc`), true);
  assert.equal(isGroupSession('0123abcd'), false, 'a 1:1 session id');
  assert.equal(parseAnnouncement('{"call":"join"}'), 'join');
  assert.equal(parseAnnouncement('{"call":"dance"}'), null);
  assert.equal(parseAnnouncement('not json'), null);
});

/** @type {Fixture} */
let fx;
/** @type {import('playwright-core').BrowserContext | undefined} */
let context;
/** @type {import('playwright-core').Page} */
let page;
let profileDir = '';

before(async () => {
  if (skip) return;
  fx = await Fixture.start();
  const { chromium } = await import('playwright-core');
  profileDir = await mkdtemp(path.join(tmpdir(), 'chat-client-'));
  context = await chromium.launchPersistentContext(profileDir, { executablePath: CHROMIUM_BIN, headless: true, args: ARGS });
  page = await context.newPage();
  await page.goto(`${fx.base}/blank.html`);
  await page.evaluate(() => {
    /** @type {any} */ (window).make = async (/** @type {string} */ user, /** @type {any} */ opts = {}) => {
      const { SignalClient } = await import('/signal-client.js');
      const c = new SignalClient({ central: location.origin, user, baseBackoffMs: 20, maxBackoffMs: 200, ...opts });
      const log = /** @type {any[]} */ ([]);
      for (const t of ['reconnected', 'sessionreset', 'unsupported']) {
        c.addEventListener(t, (ev) => log.push({ ev: t, ...(/** @type {CustomEvent} */ (ev).detail) }));
      }
      for (const t of ['Message', 'Presence', 'Joined']) c.addEventListener(t, (ev) => log.push({ ev: t, message: /** @type {any} */ (ev).message }));
      const w = /** @type {any} */ (window);
      w.clients = w.clients ?? {};
      w.clients[user] = { c, log };
      return c.connect();
    };
    /** Settles a promise into a plain record for the test to read. */
    /** @type {any} */ (window).settle = (/** @type {Promise<any>} */ p) =>
      p.then(
        (v) => ({ ok: true, v }),
        (e) => ({ ok: false, name: e.name, errorType: e.errorType, message: e.message }),
      );
  });
});

after(async () => {
  await context?.close().catch(() => {});
  await fx?.stop();
  if (profileDir) await rm(profileDir, { recursive: true, force: true });
});

/** @param {string} what @param {() => unknown} check */
async function until(what, check, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The chat frames `user` sent over all its connections. @param {string} user */
const sentChat = (user) => fx.history.filter((c) => c.user === user).flatMap((c) => c.received.filter((m) => m.type === 'Message'));

test('sendMessage is settled by the Accepted or the Error that carries its id', { skip }, async () => {
  await page.evaluate(() => /** @type {any} */ (window).make('amy'));
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    const c = w.clients.amy.c;
    w.p1 = w.settle(c.sendMessage('zed', 'm-1', 'hello'));
    w.p2 = w.settle(c.sendMessage('zed', 'm-2', 'again'));
    w.p3 = w.settle(c.sendRoomMessage('r1', 'm-3', 'all'));
  });
  await until('three messages sent', () => sentChat('amy').length === 3);
  assert.deepEqual(sentChat('amy')[0], { type: 'Message', to: 'zed', id: 'm-1', body: 'hello' });
  // An Error for another id, or one for m-3 without its room, settles nothing.
  fx.send('amy', { type: 'Error', to: 'amy', from: 'zed', id: 'other', errorType: 'MAILBOXFULL', origin: 'server' });
  fx.send('amy', { type: 'Error', to: 'amy', from: 'zed', id: 'm-3', errorType: 'UNAVAILABLE', origin: 'server' });
  fx.send('amy', { type: 'Accepted', id: 'm-1', to: 'zed', ts: 5, stored: true });
  fx.send('amy', { type: 'Error', to: 'amy', from: 'zed', id: 'm-2', errorType: 'MAILBOXFULL', description: 'full', origin: 'server' });
  fx.send('amy', { type: 'Accepted', id: 'm-3', room: 'r1', ts: 6, recipients: 2 });
  const [r1, r2, r3] = await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    return Promise.all([w.p1, w.p2, w.p3]);
  });
  assert.equal(r1.ok, true);
  const { n, ...accepted } = r1.v;
  assert.equal(typeof n, 'number');
  assert.deepEqual(accepted, { type: 'Accepted', id: 'm-1', to: 'zed', ts: 5, stored: true });
  assert.deepEqual(r2, { ok: false, name: 'ChatError', errorType: 'MAILBOXFULL', message: "Not sent: zed's mailbox is full (too many messages waiting for them)." });
  assert.equal(r3.ok, true);
  assert.equal(r3.v.recipients, 2);
  assert.equal(await page.evaluate(() => /** @type {any} */ (window).clients.amy.c.pendingChat.size), 0);
});

test('a message without an answer times out; a retry with the same id is allowed', { skip }, async () => {
  await page.evaluate(() => /** @type {any} */ (window).make('ben', { messageTimeoutMs: 200 }));
  const r = await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    return w.settle(w.clients.ben.c.sendMessage('zed', 't-1', 'anyone?'));
  });
  assert.equal(r.errorType, 'TIMEOUT');
  assert.match(r.message, /^Not sent: no answer from the server/);
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.pt = w.settle(w.clients.ben.c.sendMessage('zed', 't-1', 'anyone?'));
  });
  await until('the retry', () => sentChat('ben').length === 2);
  fx.send('ben', { type: 'Accepted', id: 't-1', to: 'zed', ts: 7, stored: true });
  assert.equal((await page.evaluate(() => /** @type {any} */ (window).pt)).ok, true);
  assert.deepEqual(sentChat('ben').map((m) => m.id), ['t-1', 't-1']);
});

test('after a network loss every unanswered message is sent again with its id, before newer ones', { skip }, async () => {
  await page.evaluate(() => /** @type {any} */ (window).make('cid'));
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.pc = w.settle(w.clients.cid.c.sendMessage('zed', 'c-1', 'before the loss'));
  });
  await until('c-1 sent', () => sentChat('cid').length === 1);
  fx.drop('cid');
  // Written while reconnecting: queued, and sent after c-1's second copy.
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.pd = w.settle(w.clients.cid.c.sendMessage('zed', 'c-2', 'during the loss'));
  });
  await until('both on the new connection', () => (fx.conns.get('cid')?.received.filter((m) => m.type === 'Message').length ?? 0) === 2);
  assert.deepEqual(
    fx.conns.get('cid')?.received.filter((m) => m.type === 'Message').map((m) => m.id),
    ['c-1', 'c-2'],
  );
  fx.send('cid', { type: 'Accepted', id: 'c-1', to: 'zed', ts: 8, stored: true });
  fx.send('cid', { type: 'Accepted', id: 'c-1', to: 'zed', ts: 8, stored: true }); // the duplicate's answer
  fx.send('cid', { type: 'Accepted', id: 'c-2', to: 'zed', ts: 9, stored: true });
  const [a, b] = await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    return Promise.all([w.pc, w.pd]);
  });
  assert.equal(a.ok && a.v.ts, 8);
  assert.equal(b.ok && b.v.ts, 9);
});

test('a Message is acknowledged only once the page has handled it (waitUntil)', { skip }, async () => {
  await page.evaluate(() => /** @type {any} */ (window).make('dee', { ackIntervalMs: 10 }));
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.release = null;
    w.clients.dee.c.addEventListener('Message', (/** @type {any} */ ev) => {
      ev.waitUntil(new Promise((r) => (w.release = r)));
    });
  });
  fx.send('dee', { type: 'Message', from: 'zed', to: 'dee', id: 'w-1', body: 'store me', ts: 1 });
  fx.send('dee', { type: 'Pong-ish', note: 'a later frame, handled at once' });
  await page.waitForFunction(() => /** @type {any} */ (window).release !== null);
  await new Promise((r) => setTimeout(r, 150));
  assert.deepEqual(fx.acks('dee'), [], 'nothing acknowledged while the message is being stored');
  await page.evaluate(() => /** @type {any} */ (window).release());
  await until('the Ack', () => fx.acks('dee').includes(2));
});

test('presence, subscriptions and rooms are renewed after a refused resume', { skip }, async () => {
  await page.evaluate(() => /** @type {any} */ (window).make('eve'));
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    const c = w.clients.eve.c;
    c.setPresence('busy', 'in a meeting');
    c.subscribe(['fay', 'gus']);
    c.subscribe(['gus']); // already watched: nothing sent
    w.pj = w.settle(c.join('r9'));
  });
  await until('three frames', () => (fx.conns.get('eve')?.received.length ?? 0) >= 3);
  const first = fx.conns.get('eve')?.received ?? [];
  assert.deepEqual(first.slice(0, 3), [
    { type: 'SetPresence', state: 'busy', note: 'in a meeting' },
    { type: 'Subscribe', users: ['fay', 'gus'] },
    { type: 'Join', room: 'r9' },
  ]);
  fx.send('eve', { type: 'Joined', room: 'r9', members: ['eve', 'fay'] });
  const joined = await page.evaluate(() => /** @type {any} */ (window).pj);
  assert.deepEqual(joined.v.members, ['eve', 'fay']);
  fx.send('eve', { type: 'Presence', user: 'fay', state: 'away', note: 'lunch', since: 3 });
  await page.waitForFunction(() => /** @type {any} */ (window).clients.eve.log.some((/** @type {any} */ e) => e.ev === 'Presence'));

  // The node forgets the session: the client sets, subscribes and joins again by itself.
  fx.refuseResume.add('eve');
  fx.drop('eve');
  await page.waitForFunction(() => /** @type {any} */ (window).clients.eve.log.some((/** @type {any} */ e) => e.ev === 'sessionreset'));
  await until('the renewal', () => (fx.conns.get('eve')?.received.length ?? 0) >= 3);
  assert.deepEqual((fx.conns.get('eve')?.received ?? []).slice(0, 3), first.slice(0, 3));

  // Leaving: Unsubscribe, Leave; a room request answered by an Error with the room rejects.
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    const c = w.clients.eve.c;
    c.unsubscribe(['fay']);
    w.pf = w.settle(c.join('full-room'));
  });
  fx.send('eve', { type: 'Error', to: 'eve', room: 'full-room', errorType: 'ROOMFULL', origin: 'server' });
  const full = await page.evaluate(() => /** @type {any} */ (window).pf);
  assert.equal(full.ok, false);
  assert.equal(full.message, 'Room full-room: That room is full.');
  assert.deepEqual(await page.evaluate(() => [.../** @type {any} */ (window).clients.eve.c.rooms]), ['r9']);
  assert.deepEqual(await page.evaluate(() => [.../** @type {any} */ (window).clients.eve.c.subscriptions]), ['gus']);
});

test('a node without presence is detected once; nothing more is sent to it', { skip }, async () => {
  await page.evaluate(() => /** @type {any} */ (window).make('hal'));
  await page.evaluate(() => /** @type {any} */ (window).clients.hal.c.subscribe(['ida']));
  await until('Subscribe', () => fx.conns.get('hal')?.received.some((m) => m.type === 'Subscribe'));
  fx.send('hal', {
    type: 'Error',
    to: 'hal',
    errorType: 'BADMESSAGE',
    description: 'unknown message type "Subscribe" (expected one of Offer, Answer, Ok, Candidate, Shutdown, Error, Ack, Ping, Message; names are case-sensitive)',
    origin: 'server',
  });
  await page.waitForFunction(() => /** @type {any} */ (window).clients.hal.log.some((/** @type {any} */ e) => e.ev === 'unsupported'));
  const log = await page.evaluate(() => /** @type {any} */ (window).clients.hal.log.filter((/** @type {any} */ e) => e.ev === 'unsupported'));
  assert.deepEqual(log, [{ ev: 'unsupported', type: 'Subscribe', text: 'This server does not support presence yet.' }]);
  await page.evaluate(() => /** @type {any} */ (window).clients.hal.c.subscribe(['jo']));
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(fx.conns.get('hal')?.received.filter((m) => m.type === 'Subscribe').length, 1);
});

test('ChatStore keeps a message delivered twice once, by (from, id), and upgrades a version-1 history', { skip }, async () => {
  const r = await page.evaluate(async () => {
    // A version-1 database as the previous page wrote it.
    await new Promise((resolve, reject) => {
      const req = indexedDB.open('signal-chat', 1);
      req.onupgradeneeded = () => {
        const s = req.result.createObjectStore('messages', { keyPath: 'id' });
        s.createIndex('byContactTime', ['owner', 'contact', 'ts', 'id']);
        s.put({ id: 'kim|lee|old-1', msgId: 'old-1', owner: 'kim', contact: 'lee', dir: 'out', text: 'from v1', ts: 1, delivered: true });
      };
      req.onsuccess = () => {
        req.result.close();
        resolve(undefined);
      };
      req.onerror = () => reject(req.error);
    });
    const { ChatStore } = await import('/chat-store.js');
    const s = await ChatStore.open('kim');
    const a = await s.addIncoming({ id: 'x-1', contact: 'lee', from: 'lee', dir: 'in', text: 'once', ts: 10 });
    const b = await s.addIncoming({ id: 'x-1', contact: 'lee', from: 'lee', dir: 'in', text: 'once', ts: 10, delayed: true });
    // The same id from another sender, or in a room, is another message.
    const c = await s.addIncoming({ id: 'x-1', room: 'r1', from: 'lee', dir: 'in', text: 'in a room', ts: 11 });
    const d = await s.add({ id: 'x-1', contact: 'lee', dir: 'out', text: 'mine', ts: 12, status: 'sending' });
    const e = await s.update('lee', 'kim', 'x-1', { status: 'stored' });
    await s.markDelivered('lee', 'x-1');
    const f = await s.update('lee', 'kim', 'x-1', { status: 'sent' }); // late: stays delivered
    const page = await s.page('lee');
    const room = await s.page({ room: 'r1' });
    const contacts = await s.contacts();
    const rooms = await s.rooms();
    s.close();
    return {
      a: !!a, b, c: !!c, d: d.status, e: e?.status, f: f?.status,
      page: page.map((x) => `${x.from}:${x.text}:${x.status}`),
      room: room.map((x) => x.text),
      contacts: contacts.map((x) => x.contact),
      rooms: rooms.map((x) => x.room),
    };
  });
  assert.deepEqual(r, {
    a: true,
    b: null,
    c: true,
    d: 'sending',
    e: 'stored',
    f: 'delivered',
    page: ['kim:mine:delivered', 'lee:once:received', 'kim:from v1:delivered'],
    room: ['in a room'],
    contacts: ['lee'],
    rooms: ['r1'],
  });
});
