// Test fixture for the browser client tests: a small real HTTP + WebSocket server (RFC 6455
// framing written out here, no dependencies) that plays central's login API and two signal
// nodes, and lets a test make the situations that are hard to make with the real cluster on
// demand: a node closing with 1012/1001/4409/4403, a dropped TCP connection, a node that stops
// answering Pings, login failures. It serves web/*.js so that the page imports the real modules.
//
// Sessions (contract section 5) as the nodes keep them: the Welcome carries `session`,
// `resumed`, `resumeWindowMs`; every frame to a client but Pong is numbered `n` per session and
// kept until acknowledged; `?resume=<session>&last=N` resumes it (on either node) and replays
// what came after N; frames for a user whose connection is gone are kept for the resume; a
// client close 1000/1001 ends the session. A test can refuse the next resume of a user
// (`refuseResume`) or replay a few frames the client already has (`replayOverlap`).
import http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
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
 * @property {URLSearchParams} query  the upgrade request's query (token, resume, last)
 * @property {any} welcome      the Welcome sent on this connection
 * @property {boolean} closing  the node sent a close frame first (the client's is only the echo)
 */

/**
 * @typedef {object} Session
 * @property {string} id
 * @property {number} n          the last frame number given out
 * @property {{n:number, text:string}[]} ring  every frame of the session, oldest first (kept
 *   after its Ack too, so that `replayOverlap` can send acknowledged ones again)
 * @property {number} acked      the highest Ack
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
    /** @type {Map<string, Session>} each user's session (kept while its connection is gone) */
    this.sessions = new Map();
    /** users whose next resume is refused (Welcome resumed:false, a new session) */
    /** @type {Set<string>} */
    this.refuseResume = new Set();
    /** on a resume, also replay this many frames at or below `last` (the client must drop them) */
    this.replayOverlap = 0;
    /** on a resume, give the session a new token (the client must present it next time) */
    this.rotateOnResume = false;
    /** hold Offers until this many are held, then deliver them all (forces glare) */
    this.holdOffers = 0;
    /** @type {{to:string, m:any}[]} */
    this.heldOffers = [];
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
    c.closing = true;
    c.sock.write(frame(b, 8));
    c.sock.end();
  }

  /** Drops `user`'s TCP connection without a close frame (network loss). @param {string} user */
  drop(user) {
    const c = this.conns.get(user);
    if (!c) throw new Error(`${user} is not connected`);
    c.sock.destroy();
  }

  /**
   * Sends `msg` to `user`, numbered in its session; while its connection is gone the frame is
   * kept for the resume. @param {string} user @param {object} msg
   */
  send(user, msg) {
    this.#out(user, msg);
  }

  /** Writes `msg` to `user`'s socket exactly as given (e.g. with a chosen `n`). @param {string} user @param {object} msg */
  sendRaw(user, msg) {
    const c = this.conns.get(user);
    if (!c) throw new Error(`${user} is not connected`);
    c.sock.write(frame(JSON.stringify(msg)));
  }

  /** The Acks `user` sent, over all its connections, as numbers. @param {string} user @returns {number[]} */
  acks(user) {
    return this.history.filter((c) => c.user === user).flatMap((c) => c.received.filter((m) => m.type === 'Ack').map((m) => m.n));
  }

  /**
   * Numbers `msg` in `user`'s session, keeps it until acknowledged, and writes it to the user's
   * connection if there is one. @param {string} user @param {object} msg
   */
  #out(user, msg) {
    const s = this.sessions.get(user);
    if (!s) throw new Error(`${user} has no session`);
    s.n += 1;
    const text = JSON.stringify({ ...msg, n: s.n });
    s.ring.push({ n: s.n, text });
    this.conns.get(user)?.sock.write(frame(text));
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
    const resume = u.searchParams.get('resume');
    const last = Number(u.searchParams.get('last') ?? '0');
    if (!user || ticketNode !== node) {
      sock.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}${GUID}`).digest('base64');
    sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    sock.on('error', () => {});
    const old = this.conns.get(user);
    if (old) {
      old.closing = true;
      old.sock.write(frame(Buffer.from([0x11, 0x39]), 8)); // 4409
      old.sock.end();
    }
    let session = this.sessions.get(user);
    const resumed = !!resume && session?.id === resume && !this.refuseResume.has(user);
    this.refuseResume.delete(user);
    if (!resumed || !session) {
      session = { id: randomBytes(16).toString('hex'), n: 0, ring: [], acked: 0 };
      this.sessions.set(user, session);
    } else if (this.rotateOnResume) {
      session.id = randomBytes(16).toString('hex');
    }
    const welcome = { type: 'Welcome', user, node, session: session.id, resumed, resumeWindowMs: 30000 };
    /** @type {Conn} */
    const conn = { user, node, sock, received: [], silent: false, query: u.searchParams, welcome, closing: false };
    this.conns.set(user, conn);
    this.history.push(conn);
    sock.write(frame(JSON.stringify(welcome)));
    if (resumed) {
      for (const f of session.ring) if (f.n > last - this.replayOverlap) sock.write(frame(f.text));
    }
    const mine = session;
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
          // A client close 1000/1001 ends the session; echo the close (status code only) and
          // end, as a server does.
          const code = p.length >= 2 ? p.readUInt16BE(0) : 1005;
          if ((code === 1000 || code === 1001) && !conn.closing && this.sessions.get(user) === mine && this.conns.get(user) === conn) {
            this.sessions.delete(user);
          }
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
        if (m.type === 'Ack') {
          mine.acked = Math.max(mine.acked, Number(m.n) || 0);
          continue;
        }
        m.from = user;
        if (m.type === 'Offer' && this.holdOffers > 0) {
          this.heldOffers.push({ to: m.to, m });
          if (this.heldOffers.length < this.holdOffers) continue;
          this.holdOffers = 0;
          for (const h of this.heldOffers.splice(0)) if (this.sessions.has(h.to)) this.#out(h.to, h.m);
          continue;
        }
        // Connected, or its session kept for a resume: numbered and delivered (later).
        if (this.sessions.has(m.to)) this.#out(m.to, m);
        else if (this.sessions.has(user)) {
          this.#out(
            user,
            {
                type: 'Error',
                to: user,
                from: m.to,
                sessionID: m.sessionID,
                errorType: 'OFFLINE',
                description: `${m.to} is not connected`,
                origin: 'server',
              },
          );
        }
      }
    });
  }
}
