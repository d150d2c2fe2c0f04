// Unit tests for the receiver-driven transfer logic (web/file-transfer.js): the request window,
// re-requests after a timeout, reassembly and digest checks (IncomingFile, with a fake clock),
// and the FileTransfer manager end to end over an in-memory message channel that can drop
// messages (RTCDataChannel itself is covered by the browser e2e test).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  CHUNK_SIZE,
  FileTransfer,
  IncomingFile,
  decode,
  encodeChunk,
  sha256Hex,
} from '../file-transfer.js';

const hex = (/** @type {Uint8Array} */ b) => createHash('sha256').update(b).digest('hex');

test('IncomingFile keeps a window of requests and re-requests after the timeout', async () => {
  const data = randomBytes(10 * CHUNK_SIZE + 100);
  const f = new IncomingFile(
    { name: 'x', fileID: 'f', size: data.length, type: '', sha256: hex(data) },
    { window: 4, timeoutMs: 1000, maxTries: 3 },
  );
  assert.equal(f.total, 11);
  assert.deepEqual(f.due(0), [0, 1, 2, 3]);
  assert.deepEqual(f.due(10), [], 'window full, nothing timed out');
  const chunk = (/** @type {number} */ i) => data.subarray(i * CHUNK_SIZE, Math.min(data.length, (i + 1) * CHUNK_SIZE));
  assert.equal(f.accept(1, chunk(1)), 'stored');
  assert.equal(f.accept(1, chunk(1)), 'duplicate');
  assert.equal(f.accept(3, chunk(2)), 'stored', 'full-size chunks are interchangeable by length');
  f.chunks[3] = undefined; // undo for the rest of the test
  f.receivedCount -= 1;
  f.receivedBytes -= CHUNK_SIZE;
  f.outstanding.set(3, { at: 0, tries: 1 });
  assert.equal(f.accept(10, new Uint8Array(5)), 'bad-length');
  assert.equal(f.accept(11, new Uint8Array(5)), 'out-of-range');
  assert.deepEqual(f.due(20), [4], 'one slot freed');
  // 0, 2, 3 were requested at 0 and time out at 1000; 4 at 20.
  assert.deepEqual(f.due(1000), [0, 2, 3]);
  assert.equal(f.rerequests, 3);
  assert.deepEqual(f.due(1019), []);
  assert.deepEqual(f.due(1020), [4]);
  // Everything arrives, in any order, with a late duplicate of a re-requested chunk.
  for (const i of [4, 3, 0, 2, 0]) f.accept(i, chunk(i));
  while (!f.complete) {
    for (const i of f.due(2000)) f.accept(i, chunk(i));
  }
  assert.equal(f.receivedBytes, data.length);
  const v = await f.verify();
  assert.ok(v.ok);
  assert.equal(v.sha256, hex(data));
  assert.deepEqual(new Uint8Array(await v.blob.arrayBuffer()), new Uint8Array(data));
});

test('IncomingFile gives up after maxTries requests of one chunk', () => {
  const f = new IncomingFile({ name: 'x', fileID: 'f', size: 1, type: '', sha256: hex(new Uint8Array(1)) }, {
    window: 1,
    timeoutMs: 10,
    maxTries: 2,
  });
  assert.deepEqual(f.due(0), [0]);
  assert.deepEqual(f.due(10), [0]);
  assert.throws(() => f.due(20), /did not arrive after 2 requests/);
});

test('IncomingFile detects a digest or size mismatch', async () => {
  const f = new IncomingFile({ name: 'x', fileID: 'f', size: 3, type: '', sha256: hex(new Uint8Array([1, 2, 4])) });
  f.due(0);
  f.accept(0, new Uint8Array([1, 2, 3]));
  const v = await f.verify();
  assert.equal(v.ok, false);
  assert.match(v.reason, /SHA-256 mismatch/);
});

test('a 0-byte file is complete at once', async () => {
  const f = new IncomingFile({ name: 'e', fileID: 'f', size: 0, type: '', sha256: hex(new Uint8Array(0)) });
  assert.ok(f.complete);
  assert.deepEqual(f.due(0), []);
  assert.ok((await f.verify()).ok);
});

/**
 * One end of an in-memory, ordered, message-preserving channel with a bufferedAmount that
 * drains as the peer consumes messages, like an RTCDataChannel.
 */
class MemChannel extends EventTarget {
  constructor() {
    super();
    /** @type {MemChannel | null} */
    this.peer = null;
    this.bufferedAmount = 0;
    this.bufferedAmountLowThreshold = 0;
    this.binaryType = 'blob';
    this.readyState = 'open';
    /** @type {(bytes: Uint8Array) => boolean} return false to drop the message */
    this.filter = () => true;
    this.sent = 0;
    this.maxBuffered = 0;
  }

  /** @param {Uint8Array} data */
  send(data) {
    if (this.readyState !== 'open') throw new Error('InvalidStateError');
    const copy = data.slice().buffer;
    this.sent += 1;
    this.bufferedAmount += copy.byteLength;
    this.maxBuffered = Math.max(this.maxBuffered, this.bufferedAmount);
    setImmediate(() => {
      const before = this.bufferedAmount;
      this.bufferedAmount -= copy.byteLength;
      if (before > this.bufferedAmountLowThreshold && this.bufferedAmount <= this.bufferedAmountLowThreshold) {
        this.dispatchEvent(new Event('bufferedamountlow'));
      }
      const peer = this.peer;
      if (peer && peer.readyState === 'open' && this.filter(new Uint8Array(copy))) {
        peer.dispatchEvent(new MessageEvent('message', { data: copy }));
      }
    });
  }

  close() {
    for (const c of [this, this.peer]) {
      if (c && c.readyState === 'open') {
        c.readyState = 'closed';
        c.dispatchEvent(new Event('close'));
      }
    }
  }
}

function pair() {
  const a = new MemChannel();
  const b = new MemChannel();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/** @param {EventTarget} target @param {string} type @param {(d:any)=>boolean} [pred] */
function once(target, type, pred = () => true) {
  return new Promise((resolve) => {
    const h = (/** @type {any} */ ev) => {
      if (pred(ev.detail)) {
        target.removeEventListener(type, h);
        resolve(ev.detail);
      }
    };
    target.addEventListener(type, h);
  });
}

function file(/** @type {Uint8Array} */ bytes, name = 'f.bin', type = 'application/octet-stream') {
  return new File([bytes], name, { type });
}

test('several files at once, with lost chunks re-requested, arrive intact', async () => {
  const [a, b] = pair();
  const opts = { window: 8, timeoutMs: 50, tickMs: 10, highWater: 64 * 1024, lowWater: 16 * 1024 };
  const sender = new FileTransfer(a, opts);
  const receiver = new FileTransfer(b, opts);
  // Drop every 7th chunk message the first time it is sent.
  const seen = new Set();
  let dropped = 0;
  a.filter = (bytes) => {
    if (bytes[0] !== 0x40) return true;
    const m = decode(bytes);
    const key = `${m.fileID}/${m.chunkID}`;
    if (m.kind === 'chunk' && m.chunkID % 7 === 3 && !seen.has(key)) {
      seen.add(key);
      dropped += 1;
      return false;
    }
    return true;
  };
  const files = [randomBytes(40 * CHUNK_SIZE + 17), randomBytes(3 * CHUNK_SIZE), new Uint8Array(0), randomBytes(5)];
  const done = new Map();
  const progress = new Map();
  receiver.addEventListener('progress', (ev) => {
    const d = /** @type {CustomEvent} */ (ev).detail;
    const last = progress.get(d.fileID) ?? 0;
    assert.ok(d.bytes >= last, 'progress never goes backwards');
    progress.set(d.fileID, d.bytes);
  });
  const allDone = new Promise((resolve) => {
    receiver.addEventListener('done', (ev) => {
      const d = /** @type {CustomEvent} */ (ev).detail;
      done.set(d.name, d);
      if (done.size === files.length) resolve(undefined);
    });
  });
  const failed = [];
  receiver.addEventListener('failed', (ev) => failed.push(/** @type {CustomEvent} */ (ev).detail));
  const senderDone = [];
  sender.addEventListener('done', (ev) => senderDone.push(/** @type {CustomEvent} */ (ev).detail.name));
  await Promise.all(files.map((bytes, i) => sender.sendFile(file(bytes, `file-${i}`))));
  await allDone;
  assert.deepEqual(failed, []);
  assert.ok(dropped >= 6, `dropped ${dropped} chunks`);
  for (const [i, bytes] of files.entries()) {
    const d = done.get(`file-${i}`);
    assert.equal(d.size, bytes.length);
    assert.equal(d.verifiedSha256, hex(bytes));
    assert.equal(d.sha256, hex(bytes));
    assert.equal(await sha256Hex(d.blob), hex(bytes));
    assert.equal(d.blob.type, 'application/octet-stream');
  }
  assert.deepEqual(senderDone.sort(), files.map((_, i) => `file-${i}`).sort());
  // Backpressure: the sender never queued much more than the high-water mark plus one chunk.
  assert.ok(a.maxBuffered <= 64 * 1024 + CHUNK_SIZE + 64, `buffered ${a.maxBuffered}`);
  assert.equal(receiver.incoming.size, 0, 'receiver state dropped after completion');
  sender.close();
  receiver.close();
});

test('the sender cancels midway: both sides see it cancelled, nothing more is sent', async () => {
  const [a, b] = pair();
  const sender = new FileTransfer(a, { window: 4 });
  const receiver = new FileTransfer(b, { window: 4 });
  const bytes = randomBytes(200 * CHUNK_SIZE);
  const recvCancelled = once(receiver, 'cancelled');
  const sendCancelled = once(sender, 'cancelled');
  let id = '';
  sender.addEventListener('progress', (ev) => {
    const d = /** @type {CustomEvent} */ (ev).detail;
    if (d.bytes >= 10 * CHUNK_SIZE) sender.cancel(id);
  });
  id = await sender.sendFile(file(bytes));
  const r = await recvCancelled;
  const s = await sendCancelled;
  assert.equal(r.by, 'peer');
  assert.equal(s.by, 'local');
  assert.ok(r.bytes < bytes.length);
  assert.equal(sender.outgoing.size, 0);
  assert.equal(receiver.incoming.size, 0);
  const sentAfter = a.sent;
  await new Promise((res) => setTimeout(res, 50));
  assert.ok(a.sent <= sentAfter + 1, 'sender stopped sending chunks');
  sender.close();
  receiver.close();
});

test('the receiver cancels midway: the sender sees it cancelled by the peer', async () => {
  const [a, b] = pair();
  const sender = new FileTransfer(a, { window: 4 });
  const receiver = new FileTransfer(b, { window: 4 });
  const bytes = randomBytes(200 * CHUNK_SIZE);
  receiver.addEventListener('progress', (ev) => {
    const d = /** @type {CustomEvent} */ (ev).detail;
    if (d.bytes >= 10 * CHUNK_SIZE) receiver.cancel(d.fileID);
  });
  const sendCancelled = once(sender, 'cancelled');
  const recvCancelled = once(receiver, 'cancelled');
  await sender.sendFile(file(bytes));
  assert.equal((await sendCancelled).by, 'peer');
  assert.equal((await recvCancelled).by, 'local');
  sender.close();
  receiver.close();
});

test('a corrupted file fails verification and the sender is told', async () => {
  const [a, b] = pair();
  const sender = new FileTransfer(a);
  const receiver = new FileTransfer(b);
  // Flip a byte of chunk 1 in flight (re-encode the chunk message).
  const realSend = a.send.bind(a);
  a.send = (data) => {
    const m = decode(data);
    if (m.kind === 'chunk' && m.chunkID === 1) {
      const bytes = m.bytes.slice();
      bytes[0] ^= 0xff;
      return realSend(encodeChunk(m.fileID, m.chunkID, bytes));
    }
    return realSend(data);
  };
  const failed = once(receiver, 'failed');
  const cancelled = once(sender, 'cancelled');
  await sender.sendFile(file(randomBytes(3 * CHUNK_SIZE)));
  assert.match((await failed).reason, /SHA-256 mismatch/);
  const c = await cancelled;
  assert.equal(c.by, 'peer');
  assert.equal(c.reason, 'the receiver refused the file');
  sender.close();
  receiver.close();
});

test('a silent sender makes the transfer fail after the retries; a closed channel fails the rest', async () => {
  const [a, b] = pair();
  const sender = new FileTransfer(a);
  const receiver = new FileTransfer(b, { window: 2, timeoutMs: 10, tickMs: 5, maxTries: 3 });
  a.filter = (bytes) => bytes[0] !== 0x40; // no chunk ever arrives
  const failed = once(receiver, 'failed');
  await sender.sendFile(file(randomBytes(5 * CHUNK_SIZE)));
  assert.match((await failed).reason, /stopped sending data/);

  a.filter = () => false;
  const failed2 = once(sender, 'failed');
  await sender.sendFile(file(randomBytes(5 * CHUNK_SIZE)));
  a.close();
  assert.equal((await failed2).reason, 'the connection closed');
  receiver.close();
});

test('garbage on the channel is reported, not fatal', async () => {
  const [a, b] = pair();
  const receiver = new FileTransfer(b);
  const errors = [];
  receiver.addEventListener('protocolerror', (ev) => errors.push(/** @type {CustomEvent} */ (ev).detail.message));
  a.send(new Uint8Array([0x99, 0, 0]));
  a.send(new Uint8Array([0x40, 0, 1]));
  a.send(encodeChunk('nope', 0, new Uint8Array(3))); // chunk of an unknown file: ignored silently
  const sender = new FileTransfer(a);
  const done = once(receiver, 'done');
  await sender.sendFile(file(new Uint8Array([1, 2, 3])));
  assert.equal((await done).verifiedSha256, hex(new Uint8Array([1, 2, 3])));
  assert.equal(errors.length, 2);
  assert.match(errors[0], /unknown message type 0x99/);
  sender.close();
  receiver.close();
});

test('the receiver refuses files over its size limit or beyond its number of parallel files', async () => {
  const [a, b] = pair();
  const sender = new FileTransfer(a, { timeoutMs: 60000 });
  const receiver = new FileTransfer(b, { maxFileBytes: 100, maxIncoming: 1, window: 1, timeoutMs: 60000 });
  const failed = [];
  receiver.addEventListener('failed', (ev) => failed.push(/** @type {CustomEvent} */ (ev).detail));
  const tooBig = once(sender, 'cancelled', (d) => d.name === 'big');
  await sender.sendFile(file(randomBytes(101), 'big'));
  assert.equal((await tooBig).by, 'peer');
  assert.match(failed[0].reason, /larger than 100 bytes/);

  // Hold the first file's chunks so that it stays active, then offer a second one.
  a.filter = (bytes) => bytes[0] !== 0x40;
  const firstStarted = once(receiver, 'transfer', (d) => d.name === 'one');
  await sender.sendFile(file(randomBytes(50), 'one'));
  await firstStarted;
  const second = once(sender, 'cancelled', (d) => d.name === 'two');
  await sender.sendFile(file(randomBytes(50), 'two'));
  assert.equal((await second).by, 'peer');
  assert.match(failed[1].reason, /more than 1 files at once/);
  assert.equal(receiver.incoming.size, 1);
  sender.close();
  receiver.close();
  await assert.rejects(sender.sendFile(file(new Uint8Array(1))), /file channel is closed/);
});
