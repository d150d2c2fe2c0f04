// PENDING until the rooms server (issue 14, branch `rooms`) is on main: run with
// `npm run test:pending` (node --test runs this file only when named; `npm test` does not
// pick it up). Then rename it to tests/rooms.e2e.test.js.
//
// End-to-end test of rooms (contract section 8) on the demo page in real headless Chromium
// against the real `central --dev`: three pages join one room and see each other in the member
// list, chat in the room (stored per room in IndexedDB, `sent to 2`), set up a three-way mesh
// call (ordinary ROAP between members, one Offer per pair) with both data channels open between
// every pair and a text over each, and see a member leave (list, call).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Cluster, missing } from './e2e-cluster.js';

const skip = missing || false;
const ROOM = 'team-r1';

/** @type {Cluster} */
let cluster;
/** @type {Record<string, import('playwright-core').Page>} */
const pages = {};
const users = ['alice', 'bob', 'carol'];

before(async () => {
  if (skip) return;
  cluster = await Cluster.start();
});

after(async () => {
  await cluster?.stop();
});

/** @param {import('playwright-core').Page} page @param {number} n */
const members = (page, n) => page.waitForFunction((k) => document.querySelectorAll('#room-members li').length === k, n, { timeout: 10000 });

test('three users join one room and see each other', { skip }, async () => {
  for (const u of users) {
    const p = await cluster.signIn(u);
    pages[u] = p;
    await p.fill('#room-name', ROOM);
    await p.click('#join-button');
    await p.waitForSelector(`#room-view[data-room="${ROOM}"][data-joined="true"]`);
  }
  for (const u of users) {
    await members(pages[u], 3);
    const names = await pages[u].$$eval('#room-members li', (lis) => lis.map((l) => /** @type {HTMLElement} */ (l).dataset.member));
    assert.deepEqual(names, users);
    assert.match((await pages[u].textContent('#room-state')) ?? '', /3 members/);
  }
});

test('room chat reaches every other member and is stored per room', { skip }, async () => {
  await pages.alice.fill('#room-input', 'Hello, room!');
  await pages.alice.click('#room-send');
  for (const u of ['bob', 'carol']) {
    await pages[u].waitForSelector('#room-message-list .msg.in:has-text("Hello, room!")');
    assert.equal((await pages[u].textContent('#room-message-list .msg.in .from'))?.trim(), 'alice');
  }
  await pages.alice.waitForSelector('#room-message-list .msg.out[data-status="sent"]:has-text("sent to 2")');
  const stored = await pages.bob.evaluate(async (room) => {
    const { ChatStore } = await import('/chat-store.js');
    const s = await ChatStore.open('bob');
    const p = await s.page({ room });
    const rooms = await s.rooms();
    s.close();
    return { texts: p.map((r) => `${r.from}:${r.text}`), rooms: rooms.map((r) => r.room) };
  }, ROOM);
  assert.deepEqual(stored, { texts: ['alice:Hello, room!'], rooms: [ROOM] });
  await pages.carol.fill('#room-input', 'Hi both.');
  await pages.carol.press('#room-input', 'Enter');
  await pages.alice.waitForSelector('#room-message-list .msg.in:has-text("Hi both.")');
  await pages.bob.waitForSelector('#room-message-list .msg.in:has-text("Hi both.")');
});

test('a three-way mesh call: data channels up between every pair', { skip }, async () => {
  for (const u of users) await pages[u].click('#call-join');
  for (const u of users) {
    await pages[u].waitForFunction(() => document.querySelectorAll('#call-peers li[data-open="true"]').length === 2, undefined, { timeout: 30000 });
  }
  // Each pair: one connection, both channels open, a text over the chat channel both ways.
  for (const u of users) {
    await pages[u].evaluate((room) => {
      const w = /** @type {any} */ (window);
      w.got = [];
      const call = w.demo.rooms.get(room).call;
      for (const p of call.manager.peers.values()) {
        p.chat.addEventListener('message', (/** @type {MessageEvent} */ ev) => w.got.push(`${p.remote}:${ev.data}`));
      }
    }, ROOM);
  }
  for (const u of users) {
    await pages[u].evaluate(([room, me]) => {
      const call = /** @type {any} */ (window).demo.rooms.get(room).call;
      for (const p of call.manager.peers.values()) p.chat.send(`ping from ${me}`);
    }, [ROOM, u]);
  }
  for (const u of users) {
    const others = users.filter((x) => x !== u);
    await pages[u].waitForFunction((n) => /** @type {any} */ (window).got.length === n, others.length, { timeout: 10000 });
    const got = await pages[u].evaluate(() => /** @type {any} */ (window).got.slice().sort());
    assert.deepEqual(got, others.map((o) => `${o}:ping from ${o}`).sort());
    const peers = await pages[u].evaluate((room) => {
      const call = /** @type {any} */ (window).demo.rooms.get(room).call;
      return [...call.manager.peers.values()].map((p) => ({ remote: p.remote, chat: p.chat.readyState, files: p.files.readyState, session: p.sessionID }));
    }, ROOM);
    assert.deepEqual(peers.map((p) => p.remote).sort(), others);
    for (const p of peers) {
      assert.equal(p.chat, 'open');
      assert.equal(p.files, 'open');
      assert.ok(p.session.startsWith(`g${ROOM.length}:${ROOM}:`), p.session);
    }
  }
  // Nobody's 1:1 call manager took part.
  for (const u of users) assert.equal(await pages[u].evaluate(() => /** @type {any} */ (window).demo.manager.peers.size), 0);
});

test('a member who leaves the room leaves the list and the call', { skip }, async () => {
  await pages.carol.click('#room-leave');
  await pages.carol.waitForSelector('#room-view', { state: 'hidden' });
  for (const u of ['alice', 'bob']) {
    await members(pages[u], 2);
    await pages[u].waitForFunction(() => document.querySelectorAll('#call-peers li').length === 1, undefined, { timeout: 10000 });
    assert.equal(await pages[u].getAttribute('#call-peers li', 'data-peer'), u === 'alice' ? 'bob' : 'alice');
  }
  assert.deepEqual(cluster.pageErrors, [], 'no script errors on any page');
});
