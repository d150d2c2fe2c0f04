// End-to-end test of TURN (contract section 9) in real headless Chromium: a real coturn
// (`turnserver`, use-auth-secret, on loopback) and the real `central --dev` with --turn-urls /
// --turn-secret. Both demo pages use `?relay=1` (iceTransportPolicy "relay"), so the data
// channel can only come up through the TURN relay, with the credentials from the login answer;
// the selected candidate pair is checked to be relay on both ends, and a chat message crosses.
//
// Env: CENTRAL_BIN (default <repo>/target/debug/central), CHROMIUM_BIN (default
// /usr/bin/chromium), TURNSERVER_BIN (default /usr/bin/turnserver). A missing one skips the
// test, saying why, except under REQUIRE_BROWSER=1 or CI=true, where it is a failure.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const CENTRAL_BIN = process.env.CENTRAL_BIN ?? path.join(repo, 'target/debug/central');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const TURNSERVER_BIN = process.env.TURNSERVER_BIN ?? '/usr/bin/turnserver';
const TURN_SECRET = 'e2e-coturn-static-auth-secret';

const missing = !existsSync(CENTRAL_BIN)
  ? `central binary not found at ${CENTRAL_BIN} (build it: cargo build -p central, or set CENTRAL_BIN)`
  : !existsSync(CHROMIUM_BIN)
    ? `chromium not found at ${CHROMIUM_BIN} (set CHROMIUM_BIN)`
    : !existsSync(TURNSERVER_BIN)
      ? `turnserver not found at ${TURNSERVER_BIN} (apt-get install coturn, or set TURNSERVER_BIN)`
      : '';
const skip = missing || false;
if (skip && (process.env.REQUIRE_BROWSER === '1' || process.env.CI === 'true')) {
  throw new Error(`cannot run the TURN e2e test: ${skip}`);
}

const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--allow-loopback-in-peer-connection', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
];

/** @returns {Promise<number>} a port free on 127.0.0.1 right now */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Polls `check` until it returns a truthy value or `timeoutMs` passes.
 * @template T
 * @param {string} what @param {number} timeoutMs @param {() => Promise<T>} check
 * @returns {Promise<T>}
 */
async function waitUntil(what, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** True when a STUN Binding request to 127.0.0.1:`port` gets a Binding success answer. */
function stunBinding(/** @type {number} */ port) {
  return new Promise((resolve) => {
    const sock = createSocket('udp4');
    const req = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]), Buffer.from('turn-e2e-tid')]);
    const done = (/** @type {boolean} */ ok) => {
      clearTimeout(timer);
      sock.close();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 300);
    sock.on('error', () => done(false));
    sock.on('message', (m) => done(m.length >= 20 && m[0] === 0x01 && m[1] === 0x01));
    sock.send(req, port, '127.0.0.1');
  });
}

/** @type {import('node:child_process').ChildProcess[]} */
const procs = [];
let log = '';
let base = '';
let turnPort = 0;
let dir = '';
/** @type {import('playwright-core').BrowserContext | undefined} */
let context;
/** @type {string[]} */
const pageErrors = [];

/** @param {string} name @param {string} bin @param {string[]} args */
function start(name, bin, args) {
  const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } });
  const keep = (/** @type {Buffer} */ d) => {
    log = (log + `[${name}] ${d}`).slice(-20000);
  };
  p.stdout?.on('data', keep);
  p.stderr?.on('data', keep);
  procs.push(p);
  return p;
}

before(async () => {
  if (skip) return;
  dir = await mkdtemp(path.join(tmpdir(), 'signal-turn-e2e-'));
  turnPort = await freePort();
  start('turnserver', TURNSERVER_BIN, [
    '-n', '--listening-ip', '127.0.0.1', '--relay-ip', '127.0.0.1', '--listening-port', String(turnPort),
    '--min-port', '40000', '--max-port', '60000', '--use-auth-secret', `--static-auth-secret=${TURN_SECRET}`,
    '--realm', 'signal.test', '--no-tls', '--no-dtls', '--no-cli', '--no-stdout-log', '--simple-log',
    // Both relay addresses are on 127.0.0.1: the peers' relays must reach each other.
    '--allow-loopback-peers',
    `--log-file=${path.join(dir, 'turn.log')}`, `--pidfile=${path.join(dir, 'turn.pid')}`, `--db=${path.join(dir, 'turndb')}`,
  ]);
  await waitUntil('turnserver to answer STUN', 15000, () => stunBinding(turnPort));

  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const central = start('central', CENTRAL_BIN, [
    '--dev', '--http-listen', `127.0.0.1:${port}`,
    '--turn-urls', `turn:127.0.0.1:${turnPort}?transport=udp`, '--turn-secret', TURN_SECRET, '--turn-ttl-secs', '600',
  ]);
  const exited = new Promise((resolve) => central.once('exit', (code) => resolve(code)));
  try {
    await Promise.race([
      waitUntil('two signal nodes in /v1/nodes', 60000, async () => {
        const body = await (await fetch(`${base}/v1/nodes`)).json();
        return Array.isArray(body.nodes) && body.nodes.length === 2;
      }),
      exited.then((code) => {
        throw new Error(`central exited early with ${code}`);
      }),
    ]);
  } catch (e) {
    throw new Error(`${e}\n--- output ---\n${log}`);
  }
  const { chromium } = await import('playwright-core');
  context = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: ARGS,
  });
});

after(async () => {
  await context?.close().catch(() => {});
  for (const p of procs) {
    if (p.exitCode !== null || p.signalCode !== null) continue;
    const gone = new Promise((resolve) => p.once('exit', resolve));
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 10000);
    await gone;
    clearTimeout(t);
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** @param {string} user @returns {Promise<import('playwright-core').Page>} */
async function signIn(user) {
  if (!context) throw new Error('no browser');
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
  await page.goto(`${base}/?test=1&relay=1`);
  await page.fill('#login-name', user);
  await page.click('#login-button');
  await page.waitForSelector('#status[data-state="open"]');
  return page;
}

/**
 * The local and remote candidate types of the selected candidate pair of the call with `remote`.
 * @param {import('playwright-core').Page} page @param {string} remote
 */
function selectedPair(page, remote) {
  return page.evaluate(async (remote) => {
    const peer = /** @type {any} */ (window).demo.manager.peers.get(remote);
    const stats = await peer.pc.getStats();
    /** @type {any} */
    let transport;
    stats.forEach((/** @type {any} */ s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) transport = s;
    });
    if (!transport) return null;
    const pair = stats.get(transport.selectedCandidatePairId);
    return { local: stats.get(pair.localCandidateId).candidateType, remote: stats.get(pair.remoteCandidateId).candidateType };
  }, remote);
}

test('with iceTransportPolicy relay, the call comes up through coturn with the login credentials', { skip }, async () => {
  // The login answer carries the TURN server and a credential for the user.
  const login = await (await fetch(`${base}/v1/endpoint?user=alice`)).json();
  assert.equal(login.iceServers.length, 1, JSON.stringify(login));
  assert.match(login.iceServers[0].username, /^\d+:alice$/);

  const alice = await signIn('alice');
  const bob = await signIn('bob');
  const servers = await alice.evaluate(() => /** @type {any} */ (window).demo.client.iceServers);
  assert.deepEqual(servers[0].urls, [`turn:127.0.0.1:${turnPort}?transport=udp`]);

  await alice.fill('#call-name', 'bob');
  await alice.click('#call-button');
  try {
    await alice.waitForSelector('#conv[data-state="connected"]', { timeout: 30000 });
    await bob.waitForSelector('#conv[data-state="connected"]', { timeout: 30000 });
  } catch (e) {
    const turnLog = await readFile(path.join(dir, 'turn.log'), 'utf8').catch(() => '');
    throw new Error(`${e}\n--- output ---\n${log}\n--- coturn ---\n${turnLog.slice(-8000)}`);
  }
  assert.deepEqual(await selectedPair(alice, 'bob'), { local: 'relay', remote: 'relay' });
  assert.deepEqual(await selectedPair(bob, 'alice'), { local: 'relay', remote: 'relay' });

  await alice.fill('#chat-input', 'through the relay');
  await alice.click('#send-button');
  await bob.waitForSelector('.msg.in:has-text("through the relay")');
  assert.deepEqual(pageErrors, []);
});
