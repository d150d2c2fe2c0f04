// Shared setup of the e2e tests that run the demo page in real headless Chromium against the
// real `central --dev` binary (central + two in-process signal nodes on loopback, real gRPC
// between them): start central on a free port and wait until it is ready with both nodes,
// launch Chromium with a fresh profile, sign users in, stop everything. Not a test file itself
// (the name does not match node --test's patterns).
//
// Env: CENTRAL_BIN (default <repo>/target/debug/central), CHROMIUM_BIN (default
// /usr/bin/chromium). Without either the tests are skipped, saying why; under REQUIRE_BROWSER=1
// that is a failure.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const webDir = path.resolve(here, '..');
const repo = path.resolve(webDir, '..');
export const CENTRAL_BIN = process.env.CENTRAL_BIN ?? path.join(repo, 'target/debug/central');
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

/** Why the e2e tests cannot run here ('' when they can). */
export const missing = !existsSync(CENTRAL_BIN)
  ? `central binary not found at ${CENTRAL_BIN} (build it: cargo build -p central, or set CENTRAL_BIN)`
  : !existsSync(CHROMIUM_BIN)
    ? `chromium not found at ${CHROMIUM_BIN} (set CHROMIUM_BIN)`
    : '';
if (missing && process.env.REQUIRE_BROWSER === '1') throw new Error(`cannot run the e2e tests: ${missing}`);

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--allow-loopback-in-peer-connection',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
];

/** @returns {Promise<number>} a port free on 127.0.0.1 right now */
export function freePort() {
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
export async function waitUntil(what, timeoutMs, check) {
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

/** A running `central --dev` and a browser. */
export class Cluster {
  constructor() {
    /** @type {import('node:child_process').ChildProcess | undefined} */
    this.central = undefined;
    this.log = '';
    this.base = '';
    /** @type {import('playwright-core').BrowserContext | undefined} */
    this.context = undefined;
    this.profileDir = '';
    /** @type {string[]} script errors on any page */
    this.pageErrors = [];
  }

  /** @param {string[]} [extraArgs] more central flags @returns {Promise<Cluster>} */
  static async start(extraArgs = []) {
    const c = new Cluster();
    const port = await freePort();
    c.base = `http://127.0.0.1:${port}`;
    c.central = spawn(CENTRAL_BIN, ['--dev', '--http-listen', `127.0.0.1:${port}`, ...extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' },
    });
    const keep = (/** @type {Buffer} */ d) => {
      c.log = (c.log + d.toString()).slice(-20000);
    };
    c.central.stdout?.on('data', keep);
    c.central.stderr?.on('data', keep);
    const exited = new Promise((resolve) => c.central?.once('exit', (code) => resolve(code)));
    try {
      await Promise.race([
        (async () => {
          await waitUntil('central /readyz', 60000, async () => (await fetch(`${c.base}/readyz`)).status === 200);
          await waitUntil('two signal nodes in /v1/nodes', 30000, async () => {
            const nodes = (await (await fetch(`${c.base}/v1/nodes`)).json()).nodes;
            return Array.isArray(nodes) && nodes.length === 2;
          });
        })(),
        exited.then((code) => {
          throw new Error(`central exited early with ${code}`);
        }),
      ]);
    } catch (e) {
      await c.stop();
      throw new Error(`${e}\n--- central output ---\n${c.log}`);
    }
    const { chromium } = await import('playwright-core');
    c.profileDir = await mkdtemp(path.join(tmpdir(), 'signal-e2e-'));
    c.context = await chromium.launchPersistentContext(c.profileDir, {
      executablePath: CHROMIUM_BIN,
      headless: true,
      args: ARGS,
      viewport: { width: 1280, height: 820 },
    });
    return c;
  }

  /** A new page with the demo, not signed in. @param {string} label @returns {Promise<import('playwright-core').Page>} */
  async page(label) {
    if (!this.context) throw new Error('no browser');
    const page = await this.context.newPage();
    page.on('pageerror', (e) => this.pageErrors.push(`${label}: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') this.pageErrors.push(`${label} console: ${m.text()}`);
    });
    await page.goto(`${this.base}/?test=1`);
    return page;
  }

  /** Signs `user` in on `page` (a new one if omitted). @param {string} user @param {import('playwright-core').Page} [page] */
  async signIn(user, page) {
    const p = page ?? (await this.page(user));
    await p.fill('#login-name', user);
    await p.click('#login-button');
    await p.waitForSelector('#status[data-state="open"]');
    await p.waitForSelector('#app:not([hidden])');
    await p.waitForFunction(() => document.getElementById('node')?.textContent);
    return p;
  }

  async stop() {
    await this.context?.close().catch(() => {});
    const central = this.central;
    if (central && central.exitCode === null && central.signalCode === null) {
      const gone = new Promise((resolve) => central.once('exit', resolve));
      central.kill('SIGTERM');
      const t = setTimeout(() => central.kill('SIGKILL'), 15000);
      await gone;
      clearTimeout(t);
    }
    if (this.profileDir) await rm(this.profileDir, { recursive: true, force: true });
  }
}
