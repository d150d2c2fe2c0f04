// @ts-check
/**
 * @file File transfer over an RTCDataChannel: the chunk codec (pure functions), the receiver's
 * reassembly/re-request state machine (pure, clock injected) and the `FileTransfer` manager that
 * drives both over a channel.
 *
 * Wire format (one binary data-channel message each): a one-byte message type, then its fields,
 * each prefixed by a two-byte big-endian length.
 *
 * | type | message       | fields                                      |
 * |------|---------------|---------------------------------------------|
 * | 0x10 | file description | name, fileID, size, type, sha256         |
 * | 0x20 | request chunk | fileID, chunkID                             |
 * | 0x40 | chunk data    | fileID, chunkID, bytes                      |
 * | 0x80 | cancel        | fileID                                      |
 *
 * Field encodings: `name`, `fileID` and `type` (MIME type) are UTF-8; `size` is an 8-byte
 * big-endian unsigned integer (at most 2^53-1); `sha256` is the 32-byte raw digest of the whole
 * file; `chunkID` is a 4-byte big-endian unsigned integer; `bytes` is the raw chunk. Chunk `n`
 * covers bytes `[n*CHUNK_SIZE, min(size, (n+1)*CHUNK_SIZE))`; a 0-byte file has no chunks.
 *
 * The transfer is receiver-driven: the receiver requests chunks, keeping a window of outstanding
 * requests, re-requests a chunk not received within a timeout, reassembles, and checks size and
 * SHA-256. Either side may cancel. The sender reads each chunk from the Blob only when it is
 * requested and stops reading while the channel's `bufferedAmount` is above a high-water mark
 * (resuming on `bufferedamountlow`), so a large file never sits in memory whole on that side.
 */

export const MSG_DESCRIPTION = 0x10;
export const MSG_REQUEST = 0x20;
export const MSG_CHUNK = 0x40;
export const MSG_CANCEL = 0x80;

/** Bytes of file data per chunk (the last chunk may be shorter). */
export const CHUNK_SIZE = 16 * 1024;
/** Largest field a two-byte length prefix can describe. */
export const MAX_FIELD = 0xffff;

/** A message that does not follow the chunk protocol. */
export class CodecError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'CodecError';
  }
}

/**
 * @typedef {object} FileDescription
 * @property {string} name     file name as shown to the user
 * @property {string} fileID   sender-chosen id, unique per channel
 * @property {number} size     bytes
 * @property {string} type     MIME type ("" when unknown)
 * @property {string} sha256   lower-case hex digest (64 characters)
 */

/**
 * @typedef {{kind:'description'} & FileDescription
 *   | {kind:'request', fileID:string, chunkID:number}
 *   | {kind:'chunk', fileID:string, chunkID:number, bytes:Uint8Array}
 *   | {kind:'cancel', fileID:string}} Decoded
 */

const utf8enc = new TextEncoder();
const utf8dec = new TextDecoder('utf-8', { fatal: true });

/**
 * Builds a message: the type byte then each field with its two-byte length.
 * @param {number} type
 * @param {Uint8Array[]} fields
 * @returns {Uint8Array}
 */
export function encodeFields(type, fields) {
  let len = 1;
  for (const f of fields) {
    if (f.length > MAX_FIELD) throw new CodecError(`field of ${f.length} bytes exceeds ${MAX_FIELD}`);
    len += 2 + f.length;
  }
  const out = new Uint8Array(len);
  out[0] = type;
  let o = 1;
  for (const f of fields) {
    out[o] = f.length >>> 8;
    out[o + 1] = f.length & 0xff;
    out.set(f, o + 2);
    o += 2 + f.length;
  }
  return out;
}

/**
 * Splits a message into its type byte and fields (views into `buf`, not copies).
 * @param {Uint8Array} buf
 * @returns {{type:number, fields:Uint8Array[]}}
 */
export function decodeFields(buf) {
  if (buf.length < 1) throw new CodecError('empty message');
  const fields = [];
  let o = 1;
  while (o < buf.length) {
    if (o + 2 > buf.length) throw new CodecError('truncated field length');
    const n = (buf[o] << 8) | buf[o + 1];
    if (o + 2 + n > buf.length) throw new CodecError(`field of ${n} bytes runs past the end`);
    fields.push(buf.subarray(o + 2, o + 2 + n));
    o += 2 + n;
  }
  return { type: buf[0], fields };
}

/** @param {number} n @returns {Uint8Array} */
export function u64(n) {
  if (!Number.isSafeInteger(n) || n < 0) throw new CodecError(`size ${n} is not a non-negative safe integer`);
  const b = new Uint8Array(8);
  const hi = Math.floor(n / 2 ** 32);
  const lo = n >>> 0;
  new DataView(b.buffer).setUint32(0, hi);
  new DataView(b.buffer).setUint32(4, lo);
  return b;
}

/** @param {Uint8Array} b @param {string} what @returns {number} */
function readU64(b, what) {
  if (b.length !== 8) throw new CodecError(`${what} must be 8 bytes, got ${b.length}`);
  const dv = new DataView(b.buffer, b.byteOffset, 8);
  const n = dv.getUint32(0) * 2 ** 32 + dv.getUint32(4);
  if (!Number.isSafeInteger(n)) throw new CodecError(`${what} ${n} is too large`);
  return n;
}

/** @param {number} n @returns {Uint8Array} */
export function u32(n) {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new CodecError(`chunkID ${n} out of range`);
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

/** @param {Uint8Array} b @returns {number} */
function readU32(b) {
  if (b.length !== 4) throw new CodecError(`chunkID must be 4 bytes, got ${b.length}`);
  return new DataView(b.buffer, b.byteOffset, 4).getUint32(0);
}

/** @param {string} hex @returns {Uint8Array} */
export function hexToBytes(hex) {
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new CodecError('sha256 must be 64 hex characters');
  const b = new Uint8Array(32);
  for (let i = 0; i < 32; i++) b[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return b;
}

/** @param {Uint8Array} b @returns {string} */
export function bytesToHex(b) {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

/** @param {Uint8Array} b @param {string} what @returns {string} */
function readText(b, what) {
  try {
    return utf8dec.decode(b);
  } catch {
    throw new CodecError(`${what} is not valid UTF-8`);
  }
}

/** @param {string} fileID @returns {string} */
function checkFileID(fileID) {
  if (fileID.length === 0) throw new CodecError('fileID is empty');
  return fileID;
}

/** @param {FileDescription} d @returns {Uint8Array} */
export function encodeDescription(d) {
  return encodeFields(MSG_DESCRIPTION, [
    utf8enc.encode(d.name),
    utf8enc.encode(checkFileID(d.fileID)),
    u64(d.size),
    utf8enc.encode(d.type ?? ''),
    hexToBytes(d.sha256),
  ]);
}

/** @param {string} fileID @param {number} chunkID @returns {Uint8Array} */
export function encodeRequest(fileID, chunkID) {
  return encodeFields(MSG_REQUEST, [utf8enc.encode(checkFileID(fileID)), u32(chunkID)]);
}

/** @param {string} fileID @param {number} chunkID @param {Uint8Array} bytes @returns {Uint8Array} */
export function encodeChunk(fileID, chunkID, bytes) {
  return encodeFields(MSG_CHUNK, [utf8enc.encode(checkFileID(fileID)), u32(chunkID), bytes]);
}

/** @param {string} fileID @returns {Uint8Array} */
export function encodeCancel(fileID) {
  return encodeFields(MSG_CANCEL, [utf8enc.encode(checkFileID(fileID))]);
}

/**
 * Decodes one message. Throws `CodecError` on anything that does not follow the protocol.
 * @param {ArrayBuffer | ArrayBufferView} data
 * @returns {Decoded}
 */
export function decode(data) {
  const buf =
    data instanceof Uint8Array
      ? data
      : ArrayBuffer.isView(data)
        ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
        : new Uint8Array(data);
  const { type, fields } = decodeFields(buf);
  /** @param {number} n @param {string} what */
  const want = (n, what) => {
    if (fields.length !== n) throw new CodecError(`${what} needs ${n} fields, got ${fields.length}`);
  };
  switch (type) {
    case MSG_DESCRIPTION: {
      want(5, 'file description');
      if (fields[4].length !== 32) throw new CodecError(`sha256 must be 32 bytes, got ${fields[4].length}`);
      return {
        kind: 'description',
        name: readText(fields[0], 'name'),
        fileID: checkFileID(readText(fields[1], 'fileID')),
        size: readU64(fields[2], 'size'),
        type: readText(fields[3], 'type'),
        sha256: bytesToHex(fields[4]),
      };
    }
    case MSG_REQUEST:
      want(2, 'chunk request');
      return { kind: 'request', fileID: checkFileID(readText(fields[0], 'fileID')), chunkID: readU32(fields[1]) };
    case MSG_CHUNK:
      want(3, 'chunk data');
      return {
        kind: 'chunk',
        fileID: checkFileID(readText(fields[0], 'fileID')),
        chunkID: readU32(fields[1]),
        bytes: fields[2],
      };
    case MSG_CANCEL:
      want(1, 'cancel');
      return { kind: 'cancel', fileID: checkFileID(readText(fields[0], 'fileID')) };
    default:
      throw new CodecError(`unknown message type 0x${type.toString(16).padStart(2, '0')}`);
  }
}

/** @param {number} size @param {number} [chunkSize] @returns {number} */
export function chunkCount(size, chunkSize = CHUNK_SIZE) {
  return Math.ceil(size / chunkSize);
}

/**
 * Expected length of chunk `chunkID` of a file of `size` bytes.
 * @param {number} size @param {number} chunkID @param {number} [chunkSize]
 */
export function chunkLength(size, chunkID, chunkSize = CHUNK_SIZE) {
  return Math.max(0, Math.min(chunkSize, size - chunkID * chunkSize));
}

/**
 * SHA-256 of a Blob or bytes, as lower-case hex (WebCrypto, in browsers and Node).
 * @param {Blob | ArrayBuffer | Uint8Array} data
 * @returns {Promise<string>}
 */
export async function sha256Hex(data) {
  const buf = data instanceof Blob ? await data.arrayBuffer() : data;
  return bytesToHex(new Uint8Array(await crypto.subtle.digest('SHA-256', /** @type {BufferSource} */ (buf))));
}

/**
 * The receiver's state for one incoming file: which chunks are requested, when, how often, and
 * which arrived. Pure: the caller passes the clock and sends what `due()` returns.
 */
export class IncomingFile {
  /**
   * @param {FileDescription} desc
   * @param {{window?:number, timeoutMs?:number, maxTries?:number, chunkSize?:number}} [opts]
   */
  constructor(desc, opts = {}) {
    this.desc = desc;
    this.window = opts.window ?? 64;
    this.timeoutMs = opts.timeoutMs ?? 3000;
    this.maxTries = opts.maxTries ?? 10;
    this.chunkSize = opts.chunkSize ?? CHUNK_SIZE;
    this.total = chunkCount(desc.size, this.chunkSize);
    /** next chunk never requested yet */
    this.next = 0;
    /** @type {Map<number, {at:number, tries:number}>} requested, not yet received */
    this.outstanding = new Map();
    /** @type {(Uint8Array|undefined)[]} */
    this.chunks = new Array(this.total);
    this.receivedCount = 0;
    this.receivedBytes = 0;
    /** chunks requested again after a timeout (for reporting) */
    this.rerequests = 0;
  }

  get complete() {
    return this.receivedCount === this.total;
  }

  /**
   * Chunk ids to request now: first those whose request timed out (re-requests), then new ones
   * until `window` requests are outstanding. Marks them requested at `now`. Throws when a chunk
   * was requested `maxTries` times without arriving.
   * @param {number} now milliseconds
   * @returns {number[]}
   */
  due(now) {
    const out = [];
    for (const [id, r] of this.outstanding) {
      if (now - r.at >= this.timeoutMs) {
        if (r.tries >= this.maxTries) {
          throw new Error(`chunk ${id} did not arrive after ${r.tries} requests`);
        }
        r.at = now;
        r.tries += 1;
        this.rerequests += 1;
        out.push(id);
      }
    }
    while (this.outstanding.size < this.window && this.next < this.total) {
      const id = this.next++;
      if (this.chunks[id] !== undefined) continue;
      this.outstanding.set(id, { at: now, tries: 1 });
      out.push(id);
    }
    return out;
  }

  /**
   * Stores a chunk. A chunk id past the end or of the wrong length is refused (it will be
   * re-requested); a second copy of a chunk is ignored.
   * @param {number} chunkID
   * @param {Uint8Array} bytes
   * @returns {'stored'|'duplicate'|'out-of-range'|'bad-length'}
   */
  accept(chunkID, bytes) {
    if (chunkID >= this.total) return 'out-of-range';
    if (this.chunks[chunkID] !== undefined) return 'duplicate';
    if (bytes.length !== chunkLength(this.desc.size, chunkID, this.chunkSize)) return 'bad-length';
    // Copy: `bytes` may be a view into a message buffer.
    this.chunks[chunkID] = bytes.slice();
    this.outstanding.delete(chunkID);
    this.receivedCount += 1;
    this.receivedBytes += bytes.length;
    return 'stored';
  }

  /** The reassembled file (only once complete). @returns {Blob} */
  assemble() {
    if (!this.complete) throw new Error('file is not complete');
    return new Blob(/** @type {BlobPart[]} */ (this.chunks), { type: this.desc.type });
  }

  /**
   * Reassembles and checks size and SHA-256 against the description.
   * @returns {Promise<{ok:true, blob:Blob, sha256:string} | {ok:false, reason:string, sha256?:string}>}
   */
  async verify() {
    const blob = this.assemble();
    if (blob.size !== this.desc.size) {
      return { ok: false, reason: `size mismatch: got ${blob.size} bytes, expected ${this.desc.size}` };
    }
    const sha256 = await sha256Hex(blob);
    if (sha256 !== this.desc.sha256) {
      return { ok: false, reason: `SHA-256 mismatch: got ${sha256}, expected ${this.desc.sha256}`, sha256 };
    }
    this.chunks = []; // the Blob holds the data now
    return { ok: true, blob, sha256 };
  }
}

/**
 * @typedef {object} TransferInfo  snapshot passed with every FileTransfer event
 * @property {string} fileID
 * @property {'send'|'receive'} direction
 * @property {string} name
 * @property {number} size
 * @property {string} type
 * @property {string} sha256     the digest announced in the description
 * @property {number} bytes      bytes sent (first time) or received so far
 * @property {'active'|'done'|'cancelled'|'failed'} state
 * @property {'local'|'peer'} [by]   who cancelled
 * @property {string} [reason]   why it failed
 * @property {Blob} [blob]       the received file (receive + done)
 * @property {string} [verifiedSha256] digest computed over the received bytes (receive + done)
 */

/**
 * Minimal RTCDataChannel surface used here (lets the manager run over any message channel).
 * @typedef {object} ChannelLike
 * @property {(data: Uint8Array) => void} send
 * @property {number} bufferedAmount
 * @property {number} bufferedAmountLowThreshold
 * @property {string} binaryType
 * @property {string} readyState
 * @property {(type:string, fn:(ev:any)=>void) => void} addEventListener
 * @property {(type:string, fn:(ev:any)=>void) => void} removeEventListener
 */

let fileCounter = 0;

/** @returns {string} a fresh random file id */
export function newFileID() {
  const r = new Uint8Array(8);
  crypto.getRandomValues(r);
  fileCounter += 1;
  return `${bytesToHex(r)}-${fileCounter}`;
}

/**
 * Sends and receives files over one data channel. Events (CustomEvent, `detail` is a
 * TransferInfo): `transfer` (a new transfer, either direction), `progress`, `done`,
 * `cancelled`, `failed`. `protocolerror` (detail `{message}`) reports a malformed message.
 */
export class FileTransfer extends EventTarget {
  /**
   * @param {ChannelLike} channel
   * @param {{window?:number, timeoutMs?:number, maxTries?:number, tickMs?:number,
   *   highWater?:number, lowWater?:number, maxIncoming?:number, maxFileBytes?:number,
   *   maxQueue?:number, now?:() => number}} [opts]
   */
  constructor(channel, opts = {}) {
    super();
    this.channel = channel;
    this.opts = {
      window: opts.window ?? 64,
      timeoutMs: opts.timeoutMs ?? 3000,
      maxTries: opts.maxTries ?? 10,
      tickMs: opts.tickMs ?? 250,
      highWater: opts.highWater ?? 1024 * 1024,
      lowWater: opts.lowWater ?? 256 * 1024,
      maxIncoming: opts.maxIncoming ?? 16,
      maxFileBytes: opts.maxFileBytes ?? 1024 * 1024 * 1024,
      maxQueue: opts.maxQueue ?? 4096,
    };
    this.now = opts.now ?? (() => performance.now());
    /** @type {Map<string, {info:TransferInfo, file:Blob, sent:Set<number>, total:number}>} */
    this.outgoing = new Map();
    /** @type {Map<string, {info:TransferInfo, state:IncomingFile}>} */
    this.incoming = new Map();
    /** @type {{fileID:string, chunkID:number}[]} chunk requests waiting to be served */
    this.queue = [];
    /** @type {Set<string>} keys of queued requests, to drop duplicates */
    this.queued = new Set();
    this.pumping = false;
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.timer = undefined;
    this.closed = false;

    channel.binaryType = 'arraybuffer';
    channel.bufferedAmountLowThreshold = this.opts.lowWater;
    this.onMessage = (/** @type {MessageEvent} */ ev) => this.#onData(ev.data);
    this.onLow = () => this.#pump();
    this.onClose = () => this.close('the connection closed');
    channel.addEventListener('message', this.onMessage);
    channel.addEventListener('bufferedamountlow', this.onLow);
    channel.addEventListener('close', this.onClose);
  }

  /**
   * Offers a file to the peer. Resolves with its fileID once the description is sent.
   * @param {Blob & {name?:string}} file
   * @returns {Promise<string>}
   */
  async sendFile(file) {
    if (this.closed) throw new Error('file channel is closed');
    const sha256 = await sha256Hex(file);
    const fileID = newFileID();
    /** @type {TransferInfo} */
    const info = {
      fileID,
      direction: 'send',
      name: file.name ?? 'file',
      size: file.size,
      type: file.type ?? '',
      sha256,
      bytes: 0,
      state: 'active',
    };
    const total = chunkCount(file.size);
    this.outgoing.set(fileID, { info, file, sent: new Set(), total });
    this.#emit('transfer', info);
    this.#send(encodeDescription(info));
    if (total === 0) this.#finish(info, 'done');
    return fileID;
  }

  /**
   * Cancels a transfer in either direction and tells the peer.
   * @param {string} fileID
   */
  cancel(fileID) {
    const t = this.outgoing.get(fileID) ?? this.incoming.get(fileID);
    if (!t || t.info.state === 'cancelled' || t.info.state === 'failed') return;
    if (t.info.direction === 'receive' && t.info.state === 'done') return;
    this.#trySend(encodeCancel(fileID));
    t.info.by = 'local';
    this.#drop(fileID);
    this.#finish(t.info, 'cancelled');
  }

  /** All transfers this manager knows of. @returns {TransferInfo[]} */
  list() {
    return [...this.outgoing.values(), ...this.incoming.values()].map((t) => ({ ...t.info }));
  }

  /**
   * Stops: every active transfer fails with `reason`.
   * @param {string} [reason]
   */
  close(reason = 'closed') {
    if (this.closed) return;
    this.closed = true;
    for (const t of [...this.outgoing.values(), ...this.incoming.values()]) {
      if (t.info.state === 'active') {
        t.info.reason = reason;
        this.#finish(t.info, 'failed');
      }
    }
    this.outgoing.clear();
    this.incoming.clear();
    this.queue = [];
    this.queued.clear();
    this.#stopTimer();
    this.channel.removeEventListener('message', this.onMessage);
    this.channel.removeEventListener('bufferedamountlow', this.onLow);
    this.channel.removeEventListener('close', this.onClose);
  }

  /** @param {string} type @param {TransferInfo} info */
  #emit(type, info) {
    this.dispatchEvent(new CustomEvent(type, { detail: { ...info } }));
  }

  /** @param {TransferInfo} info @param {'done'|'cancelled'|'failed'} state */
  #finish(info, state) {
    info.state = state;
    this.#emit(state, info);
  }

  /** @param {Uint8Array} bytes */
  #send(bytes) {
    this.channel.send(bytes);
  }

  /** @param {Uint8Array} bytes @returns {boolean} */
  #trySend(bytes) {
    try {
      if (this.channel.readyState !== 'open') return false;
      this.channel.send(bytes);
      return true;
    } catch {
      return false;
    }
  }

  /** Forgets a transfer's data (keeps nothing but the info held by the caller). @param {string} fileID */
  #drop(fileID) {
    this.outgoing.delete(fileID);
    const inc = this.incoming.get(fileID);
    if (inc) {
      this.incoming.delete(fileID);
      if (this.incoming.size === 0) this.#stopTimer();
    }
    if (this.queued.size > 0) {
      this.queue = this.queue.filter((r) => r.fileID !== fileID);
      this.queued = new Set(this.queue.map((r) => `${r.fileID}/${r.chunkID}`));
    }
  }

  /** @param {unknown} data */
  #onData(data) {
    if (this.closed) return;
    if (typeof data === 'string') {
      this.#protocolError('text message on the file channel');
      return;
    }
    if (data instanceof Blob) {
      // binaryType is 'arraybuffer'; a Blob would only come from a misconfigured channel.
      data.arrayBuffer().then((b) => this.#onData(b), () => this.#protocolError('unreadable Blob message'));
      return;
    }
    /** @type {Decoded} */
    let msg;
    try {
      msg = decode(/** @type {ArrayBuffer} */ (data));
    } catch (e) {
      this.#protocolError(e instanceof Error ? e.message : String(e));
      return;
    }
    switch (msg.kind) {
      case 'description':
        this.#onDescription(msg);
        break;
      case 'request':
        this.#onRequest(msg.fileID, msg.chunkID);
        break;
      case 'chunk':
        this.#onChunk(msg.fileID, msg.chunkID, msg.bytes);
        break;
      case 'cancel':
        this.#onCancel(msg.fileID);
        break;
    }
  }

  /** @param {string} message */
  #protocolError(message) {
    this.dispatchEvent(new CustomEvent('protocolerror', { detail: { message } }));
  }

  /** @param {FileDescription} desc */
  #onDescription(desc) {
    if (this.incoming.has(desc.fileID)) return this.#protocolError(`duplicate file description ${desc.fileID}`);
    /** @type {TransferInfo} */
    const info = {
      fileID: desc.fileID,
      direction: 'receive',
      name: desc.name,
      size: desc.size,
      type: desc.type,
      sha256: desc.sha256,
      bytes: 0,
      state: 'active',
    };
    this.#emit('transfer', info);
    let refuse = '';
    if (desc.size > this.opts.maxFileBytes) refuse = `file is larger than ${this.opts.maxFileBytes} bytes`;
    else if (this.incoming.size >= this.opts.maxIncoming) refuse = `more than ${this.opts.maxIncoming} files at once`;
    if (refuse) {
      this.#trySend(encodeCancel(desc.fileID));
      info.reason = refuse;
      this.#finish(info, 'failed');
      return;
    }
    const state = new IncomingFile(desc, this.opts);
    this.incoming.set(desc.fileID, { info, state });
    if (state.complete) {
      void this.#complete(desc.fileID);
      return;
    }
    this.#requestDue(desc.fileID);
    this.#startTimer();
  }

  /** Sends the chunk requests due for one file. @param {string} fileID */
  #requestDue(fileID) {
    const t = this.incoming.get(fileID);
    if (!t || t.info.state !== 'active' || t.state.complete) return;
    let ids;
    try {
      ids = t.state.due(this.now());
    } catch (e) {
      this.#trySend(encodeCancel(fileID));
      t.info.reason = `the sender stopped sending data (${e instanceof Error ? e.message : e})`;
      this.#drop(fileID);
      this.#finish(t.info, 'failed');
      return;
    }
    for (const id of ids) {
      if (!this.#trySend(encodeRequest(fileID, id))) break; // re-requested on a later tick
    }
  }

  /** @param {string} fileID @param {number} chunkID @param {Uint8Array} bytes */
  #onChunk(fileID, chunkID, bytes) {
    const t = this.incoming.get(fileID);
    if (!t || t.info.state !== 'active') return; // late chunk of a finished or cancelled file
    const r = t.state.accept(chunkID, bytes);
    if (r === 'out-of-range' || r === 'bad-length') {
      this.#protocolError(`chunk ${chunkID} of ${fileID}: ${r}`);
      return;
    }
    if (r === 'duplicate') return;
    t.info.bytes = t.state.receivedBytes;
    this.#emit('progress', t.info);
    if (t.state.complete) void this.#complete(fileID);
    else this.#requestDue(fileID);
  }

  /** @param {string} fileID */
  async #complete(fileID) {
    const t = this.incoming.get(fileID);
    if (!t) return;
    const v = await t.state.verify();
    if (this.incoming.get(fileID) !== t || t.info.state !== 'active') return; // cancelled meanwhile
    this.#drop(fileID);
    if (v.ok) {
      t.info.blob = v.blob;
      t.info.verifiedSha256 = v.sha256;
      t.info.bytes = t.info.size;
      this.#finish(t.info, 'done');
    } else {
      this.#trySend(encodeCancel(fileID));
      t.info.reason = v.reason;
      this.#finish(t.info, 'failed');
    }
  }

  /** @param {string} fileID @param {number} chunkID */
  #onRequest(fileID, chunkID) {
    const t = this.outgoing.get(fileID);
    if (!t) return; // cancelled or unknown: the peer learns from our cancel
    if (chunkID >= t.total) return this.#protocolError(`request for chunk ${chunkID} past the end of ${fileID}`);
    const key = `${fileID}/${chunkID}`;
    if (this.queued.has(key)) return;
    if (this.queue.length >= this.opts.maxQueue) return; // the receiver re-requests after its timeout
    this.queue.push({ fileID, chunkID });
    this.queued.add(key);
    this.#pump();
  }

  /** Serves queued requests while the channel's buffer is below the high-water mark. */
  async #pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (!this.closed && this.queue.length > 0 && this.channel.bufferedAmount <= this.opts.highWater) {
        const req = /** @type {{fileID:string, chunkID:number}} */ (this.queue.shift());
        this.queued.delete(`${req.fileID}/${req.chunkID}`);
        const t = this.outgoing.get(req.fileID);
        if (!t) continue;
        const start = req.chunkID * CHUNK_SIZE;
        const bytes = new Uint8Array(await t.file.slice(start, start + chunkLength(t.info.size, req.chunkID)).arrayBuffer());
        if (this.outgoing.get(req.fileID) !== t) continue; // cancelled while reading
        if (!this.#trySend(encodeChunk(req.fileID, req.chunkID, bytes))) break;
        if (!t.sent.has(req.chunkID)) {
          t.sent.add(req.chunkID);
          t.info.bytes += bytes.length;
          if (t.info.state === 'active') {
            this.#emit('progress', t.info);
            if (t.sent.size === t.total) this.#finish(t.info, 'done');
          }
        }
      }
    } finally {
      this.pumping = false;
    }
    // Requests that arrived while the last read was pending, with room in the buffer.
    if (!this.closed && this.queue.length > 0 && this.channel.bufferedAmount <= this.opts.highWater) void this.#pump();
  }

  /** @param {string} fileID */
  #onCancel(fileID) {
    const t = this.outgoing.get(fileID) ?? this.incoming.get(fileID);
    if (!t) return;
    if (t.info.state === 'cancelled' || t.info.state === 'failed') return;
    this.#drop(fileID);
    if (t.info.state === 'done' && t.info.direction === 'send') {
      // The receiver refused the file after the last chunk (e.g. a digest mismatch).
      t.info.reason = 'the receiver refused the file';
    }
    t.info.by = 'peer';
    this.#finish(t.info, 'cancelled');
  }

  #startTimer() {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => {
      for (const id of [...this.incoming.keys()]) this.#requestDue(id);
    }, this.opts.tickMs);
  }

  #stopTimer() {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }
}
