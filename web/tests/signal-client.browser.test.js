// Tests of web/signal-client.js and web/roap-peer.js in real headless Chromium (real WebSocket,
// real RTCPeerConnection), against ws-fixture.js: reconnect through central after close 1012 /
// 1001 / network loss / keepalive timeout, with backoff through failed logins; no reconnect
// after 4409; messages sent while reconnecting are delivered after the Welcome; server errors
// in plain words; a fatal login error; and glare (both sides call at once) resolving to one call.
// Pure helpers (backoff, error texts, glare rule) are checked in Node.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Fixture } from './ws-fixture.js';
import { backoffDelay, describeError, shouldReconnect, CLOSE } from '../signal-client.js';
import { resolveGlare } from '../roap-peer.js';

const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const skip = existsSync(CHROMIUM_BIN) ? false : `chromium not found at ${CHROMIUM_BIN} (set CHROMIUM_BIN)`;
if (skip && process.env.REQUIRE_BROWSER === '1') throw new Error(`cannot run the browser tests: ${skip}`);
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--allow-loopback-in-peer-connection', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
];

test('backoff grows exponentially, is capped, and is jittered', () => {
  const lo = (/** @type {number} */ a) => backoffDelay(a, { baseMs: 100, maxMs: 5000, random: () => 0 });
  const hi = (/** @type {number} */ a) => backoffDelay(a, { baseMs: 100, maxMs: 5000, random: () => 0.999999 });
  assert.deepEqual([0, 1, 2, 3].map(lo), [50, 100, 200, 400]);
  assert.ok(Math.abs(hi(0) - 100) < 0.01 && Math.abs(hi(3) - 800) < 0.01);
  assert.equal(lo(20), 2500);
  assert.ok(hi(100) <= 5000);
});

test('reconnect on every close but normal and replaced', () => {
  for (const c of [CLOSE.GOING_AWAY, CLOSE.DRAINING, CLOSE.TRY_AGAIN_LATER, CLOSE.ABNORMAL, CLOSE.KEEPALIVE, CLOSE.TOO_LARGE]) {
    assert.ok(shouldReconnect(c), String(c));
  }
  assert.equal(shouldReconnect(CLOSE.REPLACED), false);
  assert.equal(shouldReconnect(CLOSE.NORMAL), false);
});

test('every error type has plain words', () => {
  assert.equal(describeError('OFFLINE', { peer: 'bob' }), 'bob is not online right now.');
  for (const t of ['NOMATCH', 'TIMEOUT', 'REFUSED', 'CONFLICT', 'DOUBLECONFLICT', 'FAILED', 'OFFLINE', 'BADMESSAGE', 'FORBIDDEN', 'TOOLARGE', 'RATELIMITED', 'UNAVAILABLE']) {
    const text = describeError(t, { peer: 'bob' });
    assert.ok(!text.includes(t) && text.endsWith('.'), `${t}: ${text}`);
  }
});

test('glare: the higher tieBreaker wins, equal ones are a double conflict', () => {
  assert.equal(resolveGlare(10, 5), 'win');
  assert.equal(resolveGlare(5, 10), 'yield');
  assert.equal(resolveGlare(7, 7), 'double');
  assert.equal(resolveGlare(1, undefined), 'win');
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
  profileDir = await mkdtemp(path.join(tmpdir(), 'signal-client-'));
  context = await chromium.launchPersistentContext(profileDir, { executablePath: CHROMIUM_BIN, headless: true, args: ARGS });
  page = await context.newPage();
  await page.goto(`${fx.base}/blank.html`);
  // A client per user, recording its events, reachable as window.clients[user].
  await page.evaluate(() => {
    /** @type {any} */ (window).make = async (/** @type {string} */ user, /** @type {any} */ opts = {}) => {
      const { SignalClient } = await import('/signal-client.js');
      const c = new SignalClient({ central: location.origin, user, baseBackoffMs: 20, maxBackoffMs: 200, ...opts });
      const log = /** @type {any[]} */ ([]);
      for (const t of ['state', 'reconnected', 'replaced']) {
        c.addEventListener(t, (ev) => log.push({ ev: t, ...(/** @type {CustomEvent} */ (ev).detail) }));
      }
      for (const t of ['servererror', 'Pong', 'Offer']) {
        c.addEventListener(t, (ev) => log.push({ ev: t, message: /** @type {any} */ (ev).message, text: /** @type {any} */ (ev).text }));
      }
      const w = /** @type {any} */ (window);
      w.clients = w.clients ?? {};
      w.clients[user] = { c, log };
      return c.connect();
    };
  });
});

after(async () => {
  await context?.close().catch(() => {});
  await fx?.stop();
  if (profileDir) await rm(profileDir, { recursive: true, force: true });
});

/**
 * Waits in the page until `user`'s client has logged `pred`.
 * @param {string} user @param {string} pred JS expression over `e` (a log entry)
 */
async function waitLog(user, pred) {
  await page.waitForFunction(
    ([u, p]) => {
      const w = /** @type {any} */ (window);
      // eslint-disable-next-line no-new-func
      const f = new Function('e', `return ${p}`);
      return w.clients?.[u]?.log.some((/** @type {any} */ e) => f(e));
    },
    [user, pred],
  );
}

/** @param {string} user @returns {Promise<any>} */
const state = (user) => page.evaluate((u) => /** @type {any} */ (window).clients[u].c.state, user);

test('after close 1012 the client goes back to central, lands on the other node and delivers what was sent meanwhile', { skip }, async () => {
  const welcome = await page.evaluate(() => /** @type {any} */ (window).make('carol'));
  assert.equal(welcome.type, 'Welcome');
  const first = welcome.node;
  const loginsBefore = fx.logins.filter((l) => l.user === 'carol').length;
  fx.close('carol', 1012);
  await waitLog('carol', `e.ev === 'state' && e.state === 'reconnecting' && e.code === 1012`);
  // Sent while reconnecting: queued, then delivered after the Welcome on the new node.
  await page.evaluate(() => /** @type {any} */ (window).clients.carol.c.sendShutdown('dave', 's-queued'));
  await waitLog('carol', `e.ev === 'reconnected'`);
  assert.equal(fx.logins.filter((l) => l.user === 'carol').length, loginsBefore + 1, 'one new login at central');
  const now = fx.conns.get('carol');
  assert.ok(now);
  assert.notEqual(now.node, first, 'the new endpoint is the other node');
  assert.equal(await state('carol'), 'open');
  await waitLog('carol', `e.ev === 'servererror' && e.message.sessionID === 's-queued'`);
  assert.deepEqual(now.received[0], { type: 'Shutdown', to: 'dave', sessionID: 's-queued' });
});

test('close 1001, network loss and a silent node all lead to a reconnect', { skip }, async () => {
  await page.evaluate(() => /** @type {any} */ (window).make('erin', { pingIntervalMs: 100, pingTimeoutMs: 300 }));
  const count = () => fx.history.filter((c) => c.user === 'erin').length;
  fx.close('erin', 1001);
  await waitLog('erin', `e.ev === 'state' && e.state === 'reconnecting' && e.code === 1001`);
  await waitLog('erin', `e.ev === 'reconnected'`);
  assert.equal(count(), 2);

  fx.drop('erin');
  await waitLog('erin', `e.ev === 'state' && e.state === 'reconnecting' && e.code === 1006`);
  await page.waitForFunction(() => /** @type {any} */ (window).clients.erin.log.filter((/** @type {any} */ e) => e.ev === 'reconnected').length === 2);
  assert.equal(count(), 3);

  // Pings go unanswered: the client gives up on the connection and reconnects.
  fx.silentUsers.add('erin');
  await waitLog('erin', `e.ev === 'state' && e.state === 'reconnecting' && e.code === 4000`);
  fx.silentUsers.delete('erin');
  await page.waitForFunction(() => /** @type {any} */ (window).clients.erin.log.filter((/** @type {any} */ e) => e.ev === 'reconnected').length === 3);
  assert.ok(fx.history.filter((c) => c.user === 'erin').some((c) => c.received.some((m) => m.type === 'Ping')));
  await page.evaluate(() => /** @type {any} */ (window).clients.erin.c.close());
});

test('failed logins during a reconnect are retried with backoff', { skip }, async () => {
  await page.evaluate(() => /** @type {any} */ (window).make('frank'));
  fx.failLogins.push(503, 503, 503);
  fx.close('frank', 1013);
  await waitLog('frank', `e.ev === 'reconnected'`);
  const logins = fx.logins.filter((l) => l.user === 'frank').map((l) => l.status);
  assert.deepEqual(logins, [200, 503, 503, 503, 200]);
  const waits = await page.evaluate(() =>
    /** @type {any} */ (window).clients.frank.log.filter((/** @type {any} */ e) => e.state === 'reconnecting').map((/** @type {any} */ e) => e.retryInMs),
  );
  assert.equal(waits.length, 4);
  assert.match(
    await page.evaluate(() => /** @type {any} */ (window).clients.frank.log.find((/** @type {any} */ e) => e.state === 'reconnecting' && e.reason?.includes('No signaling server'))?.reason ?? ''),
    /No signaling server is available right now \(no live node\)/,
  );
});

test('a replaced connection (4409) is reported and not reconnected', { skip }, async () => {
  await page.evaluate(() => /** @type {any} */ (window).make('gina'));
  const logins = fx.logins.length;
  fx.close('gina', 4409);
  await waitLog('gina', `e.ev === 'replaced' && e.code === 4409`);
  assert.equal(await state('gina'), 'replaced');
  // Still replaced after several backoff periods, and no login was attempted.
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(await state('gina'), 'replaced');
  assert.equal(fx.logins.length, logins);
  const sendErr = await page.evaluate(() => {
    try {
      /** @type {any} */ (window).clients.gina.c.sendOk('x', 's');
      return '';
    } catch (e) {
      return String(e);
    }
  });
  assert.match(sendErr, /Signed in elsewhere/);
});

test('a bad user id fails the first connect with the server\'s reason, without retrying', { skip }, async () => {
  const err = await page.evaluate(() => /** @type {any} */ (window).make('has space').then(() => 'connected', (e) => `${e.name}: ${e.message} fatal=${e.fatal}`));
  assert.equal(err, 'SignalError: Login failed: user id must be 1 to 128 bytes without whitespace. fatal=true');
  assert.equal(fx.logins.filter((l) => l.user === 'has space').length, 1);
});

test('glare: both call each other at once and end up in one call with a working data channel', { skip }, async () => {
  const result = await page.evaluate(async () => {
    const { SignalClient } = await import('/signal-client.js');
    const { PeerManager } = await import('/roap-peer.js');
    await navigator.mediaDevices.getUserMedia({ audio: true });
    const mk = async (/** @type {string} */ user) => {
      const c = new SignalClient({ central: location.origin, user });
      await c.connect();
      return new PeerManager(c);
    };
    const [h, i] = await Promise.all([mk('hank'), mk('iris')]);
    const opened = (/** @type {any} */ peer) =>
      new Promise((resolve) => {
        if (peer.chat.readyState === 'open' && peer.files.readyState === 'open') resolve(undefined);
        else peer.addEventListener('open', () => resolve(undefined));
      });
    // Both offers leave before either arrives.
    h.call('iris');
    i.call('hank');
    const until = async (/** @type {() => boolean} */ f) => {
      while (!f()) await new Promise((r) => setTimeout(r, 20));
    };
    await until(() => {
      const a = h.peers.get('iris');
      const b = i.peers.get('hank');
      return !!a && !!b && a.sessionID === b.sessionID && a.chat.readyState === 'open' && b.chat.readyState === 'open';
    });
    const a = /** @type {any} */ (h.peers.get('iris'));
    const b = /** @type {any} */ (i.peers.get('hank'));
    await Promise.all([opened(a), opened(b)]);
    const got = new Promise((resolve) => b.chat.addEventListener('message', (/** @type {MessageEvent} */ e) => resolve(e.data), { once: true }));
    a.chat.send('after glare');
    return { same: a.sessionID === b.sessionID, text: await got, initiators: [a.initiator, b.initiator].sort() };
  });
  assert.deepEqual(result, { same: true, text: 'after glare', initiators: [false, true] });
  // It was glare: both offered, and the winner refused the loser's offer with CONFLICT.
  const sent = fx.history.filter((c) => c.user === 'hank' || c.user === 'iris').flatMap((c) => c.received);
  assert.deepEqual(sent.filter((m) => m.type === 'Offer').map((m) => m.to).sort(), ['hank', 'iris']);
  const conflicts = sent.filter((m) => m.type === 'Error');
  assert.equal(conflicts.length, 1);
  assert.equal(conflicts[0].errorType, 'CONFLICT');
  assert.equal(sent.filter((m) => m.type === 'Answer').length, 1);
  assert.equal(sent.filter((m) => m.type === 'Ok').length, 1);
});
