// Test fixture for the browser client tests: a small real HTTP + WebSocket server (RFC 6455
// framing written out here, no dependencies) that plays central's login API and two signal
// nodes, and lets a test make the situations that are hard to make with the real cluster on
// demand: a node closing with 1012/1001/4409, a dropped TCP connection, a node that stops
// answering Pings, login failures. It serves web/*.js so that the page imports the real modules.
import http from 'node:http';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** @param {Buffer | string} payload @param {number} opcode */
function frame(payload, opcode = 1) {
  const p = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  let head;
  if (p.length < 126) head = Buffer.from([0x80 | opcode, p.length]);
  else if (p.length < 65536) {
    head = Buffer.alloc(4);
    head[0] = 0x80 | opcode;
    head[1] = 126;
    head.writeUInt16BE(p.length, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(p.length), 2);
  }
  return Buffer.concat([head, p]);
}

/**
 * @typedef {object} Conn
 * @property {string} user
 * @property {string} node
 * @property {import('node:net').Socket} sock
 * @property {any[]} received   JSON frames the client sent
 * @property {boolean} silent   stop answering Pings
 */

export class Fixture {
  constructor() {
    /** @type {{id:string, url:string, server:http.Server}[]} */
    this.nodes = [];
    /** @type {Map<string, Conn>} current connection per user */
    this.conns = new Map();
    /** @type {Conn[]} every connection ever made */
    this.history = [];
    /** @type {{user:string, node:string, status:number}[]} */
    this.logins = [];
    /** statuses to answer the next logins with (then normal service) */
    /** @type {number[]} */
    this.failLogins = [];
    /** users whose node stops answering Pings */
    /** @type {Set<string>} */
    this.silentUsers = new Set();
    this.next = 0;
    this.base = '';
    /** @type {http.Server | null} */
    this.central = null;
  }

  /** @returns {Promise<Fixture>} */
  static async start() {
    const f = new Fixture();
    await f.#startNode('node-a');
    await f.#startNode('node-b');
    f.central = http.createServer((req, res) => void f.#http(req, res));
    await new Promise((r) => f.central?.listen(0, '127.0.0.1', () => r(undefined)));
    const addr = /** @type {import('node:net').AddressInfo} */ (f.central.address());
    f.base = `http://127.0.0.1:${addr.port}`;
    return f;
  }

  async stop() {
    for (const c of this.history) c.sock.destroy();
    for (const n of this.nodes) n.server.close();
    this.central?.close();
  }

  /** Closes `user`'s connection with a close frame. @param {string} user @param {number} code */
  close(user, code) {
    const c = this.conns.get(user);
    if (!c) throw new Error(`${user} is not connected`);
    const b = Buffer.alloc(2);
    b.writeUInt16BE(code);
    c.sock.write(frame(b, 8));
    c.sock.end();
  }

  /** Drops `user`'s TCP connection without a close frame (network loss). @param {string} user */
  drop(user) {
    const c = this.conns.get(user);
    if (!c) throw new Error(`${user} is not connected`);
    c.sock.destroy();
  }

  /** @param {string} user @param {object} msg */
  send(user, msg) {
    const c = this.conns.get(user);
    if (!c) throw new Error(`${user} is not connected`);
    c.sock.write(frame(JSON.stringify(msg)));
  }

  /** @param {http.IncomingMessage} req @param {http.ServerResponse} res */
  async #http(req, res) {
    const u = new URL(req.url ?? '/', 'http://x');
    if (u.pathname === '/v1/endpoint') {
      const user = u.searchParams.get('user') ?? '';
      res.setHeader('content-type', 'application/json');
      const forced = this.failLogins.shift();
      if (forced) {
        this.logins.push({ user, node: '', status: forced });
        res.writeHead(forced);
        res.end(JSON.stringify({ error: forced === 503 ? 'no live node' : 'refused' }));
        return;
      }
      if (!user || /\s/.test(user)) {
        this.logins.push({ user, node: '', status: 400 });
        res.writeHead(400);
        res.end(JSON.stringify({ error: 'user id must be 1 to 128 bytes without whitespace' }));
        return;
      }
      const n = this.nodes[this.next++ % this.nodes.length];
      this.logins.push({ user, node: n.id, status: 200 });
      res.end(JSON.stringify({ node: n.id, url: n.url, token: `${user}.${n.id}`, expiresIn: 60 }));
      return;
    }
    if (u.pathname === '/blank.html') {
      res.setHeader('content-type', 'text/html');
      res.end('<!doctype html><title>fixture</title>');
      return;
    }
    if (/^\/[\w-]+\.js$/.test(u.pathname)) {
      try {
        const body = await readFile(path.join(WEB, u.pathname.slice(1)));
        res.setHeader('content-type', 'text/javascript');
        res.end(body);
        return;
      } catch {
        // 404 below
      }
    }
    res.writeHead(404);
    res.end('not found');
  }

  /** @param {string} id */
  async #startNode(id) {
    const server = http.createServer((_req, res) => {
      res.writeHead(404);
      res.end();
    });
    server.on('upgrade', (req, sock) => this.#upgrade(id, req, /** @type {import('node:net').Socket} */ (sock)));
    await new Promise((r) => server.listen(0, '127.0.0.1', () => r(undefined)));
    const addr = /** @type {import('node:net').AddressInfo} */ (server.address());
    this.nodes.push({ id, url: `ws://127.0.0.1:${addr.port}/ws`, server });
  }

  /** @param {string} node @param {http.IncomingMessage} req @param {import('node:net').Socket} sock */
  #upgrade(node, req, sock) {
    const u = new URL(req.url ?? '/', 'http://x');
    const [user, ticketNode] = (u.searchParams.get('token') ?? '').split('.');
    if (!user || ticketNode !== node) {
      sock.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}${GUID}`).digest('base64');
    sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    sock.on('error', () => {});
    const old = this.conns.get(user);
    if (old) {
      old.sock.write(frame(Buffer.from([0x11, 0x39]), 8)); // 4409
      old.sock.end();
    }
    /** @type {Conn} */
    const conn = { user, node, sock, received: [], silent: false };
    this.conns.set(user, conn);
    this.history.push(conn);
    sock.write(frame(JSON.stringify({ type: 'Welcome', user, node })));
    let buf = Buffer.alloc(0);
    sock.on('close', () => {
      if (this.conns.get(user) === conn) this.conns.delete(user);
    });
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (buf.length < 2) return;
        const op = buf[0] & 0x0f;
        let len = buf[1] & 0x7f;
        let o = 2;
        if (len === 126) {
          if (buf.length < 4) return;
          len = buf.readUInt16BE(2);
          o = 4;
        } else if (len === 127) {
          if (buf.length < 10) return;
          len = Number(buf.readBigUInt64BE(2));
          o = 10;
        }
        if (buf.length < o + 4 + len) return;
        const mask = buf.subarray(o, o + 4);
        const p = Buffer.from(buf.subarray(o + 4, o + 4 + len));
        for (let i = 0; i < p.length; i++) p[i] ^= mask[i % 4];
        buf = buf.subarray(o + 4 + len);
        if (op === 8) {
          // Echo the close (status code only) and end, as a server does.
          sock.end(frame(p.subarray(0, 2), 8));
          return;
        }
        if (op !== 1) continue;
        let m;
        try {
          m = JSON.parse(p.toString());
        } catch {
          continue;
        }
        conn.received.push({ ...m });
        if (m.type === 'Ping') {
          if (!this.silentUsers.has(user)) sock.write(frame('{"type":"Pong"}'));
          continue;
        }
        m.from = user;
        const peer = this.conns.get(m.to);
        if (peer) peer.sock.write(frame(JSON.stringify(m)));
        else {
          sock.write(
            frame(
              JSON.stringify({
                type: 'Error',
                to: user,
                from: m.to,
                sessionID: m.sessionID,
                errorType: 'OFFLINE',
                description: `${m.to} is not connected`,
                origin: 'server',
              }),
            ),
          );
        }
      }
    });
  }
}
