// Unit tests (Node) of the ICE servers of the login answer (contract section 9): `login()` keeps
// the usable `iceServers` entries and drops malformed ones without failing the login, and
// `SignalClient.iceServers` holds the servers of the latest login, so that a reconnect (here
// after close 1012) renews the TURN credentials that new peer connections use.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { login, parseIceServers, SignalClient, CLOSE } from '../signal-client.js';

/** A fetch that answers each login with the next of `answers` (JSON bodies, status 200). */
function fakeFetch(/** @type {any[]} */ answers) {
  let i = 0;
  const calls = [];
  /** @type {any} */
  const f = async (/** @type {URL} */ url) => {
    calls.push(String(url));
    const body = answers[Math.min(i++, answers.length - 1)];
    return { ok: true, status: 200, json: async () => body };
  };
  f.calls = calls;
  return f;
}

const answer = (/** @type {string} */ user, /** @type {number} */ expiry, /** @type {string} */ node) => ({
  node,
  url: `ws://127.0.0.1:1/ws`,
  token: `t-${expiry}`,
  expiresIn: 60,
  iceServers: [
    { urls: ['stun:stun.example:3478'] },
    { urls: ['turn:turn.example:3478?transport=udp', 'turns:turn.example:5349'], username: `${expiry}:${user}`, credential: `cred-${expiry}` },
  ],
});

test('parseIceServers keeps usable entries and drops malformed ones', () => {
  assert.deepEqual(parseIceServers(undefined), []);
  assert.deepEqual(parseIceServers({ urls: 'stun:x' }), []);
  assert.deepEqual(
    parseIceServers([
      { urls: 'stun:a' },
      null,
      'turn:b',
      { urls: [] },
      { urls: [7, 'turn:c', ''], username: 'u', credential: 'p', extra: 1 },
      { urls: ['turn:d'], username: 5 },
    ]),
    [{ urls: ['stun:a'] }, { urls: ['turn:c'], username: 'u', credential: 'p' }, { urls: ['turn:d'] }],
  );
});

test('login returns the iceServers of the answer, and [] when central has none', async () => {
  const ep = await login('http://central.test', 'alice', { fetch: fakeFetch([answer('alice', 100, 'n1')]) });
  assert.equal(ep.iceServers.length, 2);
  assert.equal(ep.iceServers[1].username, '100:alice');
  assert.equal(ep.iceServers[1].credential, 'cred-100');
  const { iceServers, ...rest } = answer('alice', 1, 'n1');
  const bare = await login('http://central.test', 'alice', { fetch: fakeFetch([rest]) });
  assert.deepEqual(bare.iceServers, []);
  assert.equal(iceServers.length, 2);
});

/** A WebSocket stand-in: welcomes on open; `close(code)` from the test ends it like a server. */
class FakeWS {
  /** @type {FakeWS[]} */
  static all = [];
  /** @param {string} url */
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    /** @type {((ev:any) => void) | null} */
    this.onmessage = null;
    /** @type {((ev:any) => void) | null} */
    this.onclose = null;
    FakeWS.all.push(this);
    setTimeout(() => {
      this.readyState = 1;
      const node = FakeWS.all.length === 1 ? 'n1' : 'n2';
      this.onmessage?.({ data: JSON.stringify({ type: 'Welcome', user: 'alice', node }) });
    }, 0);
  }
  send() {}
  /** @param {number} code */
  close(code = CLOSE.NORMAL, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

test('SignalClient renews its iceServers at every login (reconnect after 1012)', async () => {
  const fetch = fakeFetch([answer('alice', 100, 'n1'), answer('alice', 200, 'n2')]);
  const client = new SignalClient({
    central: 'http://central.test',
    user: 'alice',
    fetch,
    WebSocket: /** @type {any} */ (FakeWS),
    baseBackoffMs: 1,
    maxBackoffMs: 5,
  });
  assert.deepEqual(client.iceServers, []);
  await client.connect();
  assert.equal(client.iceServers[1].username, '100:alice');
  // A copy: a caller changing it does not change the client's.
  client.iceServers[1].username = 'tampered';
  assert.equal(client.iceServers[1].username, '100:alice');

  const reconnected = new Promise((resolve) => client.addEventListener('reconnected', resolve, { once: true }));
  FakeWS.all[0].close(CLOSE.DRAINING, 'draining');
  await reconnected;
  assert.equal(fetch.calls.length, 2, 'a second login');
  assert.equal(client.iceServers[1].username, '200:alice');
  assert.equal(client.iceServers[1].credential, 'cred-200');
  client.close();
});
