// @ts-check
/**
 * @file Chat history in IndexedDB: one record per message, per owner and conversation (a
 * contact, or a room), unique by (sender, message id) so that a message delivered twice
 * (at-least-once delivery, contract section 6) is kept once, indexed by time and read back
 * newest first one page at a time.
 *
 * Database `signal-chat` (version 2), store `history`, key `key` = owner, conversation, sender
 * and message id joined by newlines (none of them may contain one), index `byConvTime` on
 * `[owner, conv, ts, id]`. `owner` is the logged-in user, so several users of one browser
 * profile keep separate histories; `conv` is `u\n<contact>` or `r\n<room>`. Version 1's store
 * (`messages`, one per contact) is copied over at the upgrade.
 */

/**
 * @typedef {'sending'|'stored'|'sent'|'delivered'|'failed'|'received'} ChatStatus
 *   sent messages: `sending` (waiting for the node), `stored` (kept for an offline contact),
 *   `sent` (pushed to the contact, or to a room's members), `delivered` (the contact
 *   acknowledged it), `failed` (`error` says why; retry with the same id); received ones:
 *   `received`
 */

/**
 * @typedef {object} ChatRecord
 * @property {string} key       store key (owner, conv, from, msgId)
 * @property {string} id        `from` and `msgId` joined by a newline: unique in a conversation
 * @property {string} msgId     the message id chosen by its sender
 * @property {string} owner     the logged-in user this history belongs to
 * @property {string} conv      `u\n<contact>` or `r\n<room>`
 * @property {string} [contact] the other user (conversations with a user)
 * @property {string} [room]    the room (room conversations)
 * @property {string} from      the sender (the owner for sent messages)
 * @property {'in'|'out'} dir   received or sent
 * @property {string} text
 * @property {number} ts        milliseconds since the epoch (the node's clock for received ones)
 * @property {boolean} [delivered] sent messages: the contact acknowledged it
 * @property {ChatStatus} [status]
 * @property {string} [error]   why sending failed, in plain words
 * @property {boolean} [delayed] received from the mailbox (sent while we were offline)
 */

/**
 * What `add` and `addIncoming` take: `id` is the sender's message id; `contact` or `room`
 * names the conversation; `from` defaults to the owner (sent) or the contact (received).
 * @typedef {{id:string, contact?:string, room?:string, from?:string, dir:'in'|'out', text:string,
 *   ts:number, delivered?:boolean, status?:ChatStatus, error?:string, delayed?:boolean}} NewRecord
 */

/** A conversation: a contact's name, or `{room}`. @typedef {string | {room:string}} Target */

const DB_NAME = 'signal-chat';
const DB_VERSION = 2;
const STORE = 'history';
const INDEX = 'byConvTime';
const V1_STORE = 'messages';

/**
 * @template T
 * @param {IDBRequest<T>} req
 * @returns {Promise<T>}
 */
function done(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** @param {IDBTransaction} tx @returns {Promise<void>} */
function committed(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('transaction aborted'));
  });
}

/** @param {Target} t @returns {string} */
export function convOf(t) {
  return typeof t === 'string' ? `u\n${t}` : `r\n${t.room}`;
}

/** @param {string} owner @param {string} conv @param {string} from @param {string} msgId */
function keyOf(owner, conv, from, msgId) {
  return `${owner}\n${conv}\n${from}\n${msgId}`;
}

export class ChatStore {
  /** @param {IDBDatabase} db @param {string} owner */
  constructor(db, owner) {
    this.db = db;
    this.owner = owner;
  }

  /**
   * Opens (creating or upgrading if needed) the history of `owner`.
   * @param {string} owner
   * @param {IDBFactory} [idb]
   * @returns {Promise<ChatStore>}
   */
  static async open(owner, idb = globalThis.indexedDB) {
    const req = idb.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      const tx = /** @type {IDBTransaction} */ (req.transaction);
      if (!db.objectStoreNames.contains(STORE)) {
        const store = db.createObjectStore(STORE, { keyPath: 'key' });
        store.createIndex(INDEX, ['owner', 'conv', 'ts', 'id']);
      }
      if (db.objectStoreNames.contains(V1_STORE)) {
        // Version 1: one record per (owner, contact, msgId). Copy, then drop the old store.
        const next = tx.objectStore(STORE);
        const cur = tx.objectStore(V1_STORE).openCursor();
        cur.onsuccess = () => {
          const c = cur.result;
          if (!c) {
            db.deleteObjectStore(V1_STORE);
            return;
          }
          const v = c.value;
          const from = v.dir === 'out' ? v.owner : v.contact;
          next.put(ChatStore.#record(v.owner, { id: v.msgId, contact: v.contact, from, dir: v.dir, text: v.text, ts: v.ts, delivered: !!v.delivered }));
          c.continue();
        };
      }
    };
    const db = await done(req);
    return new ChatStore(db, owner);
  }

  /** @param {string} owner @param {NewRecord} rec @returns {ChatRecord} */
  static #record(owner, rec) {
    const conv = rec.room !== undefined ? convOf({ room: rec.room }) : convOf(rec.contact ?? '');
    const from = rec.from ?? (rec.dir === 'out' ? owner : (rec.contact ?? ''));
    /** @type {ChatRecord} */
    const full = { ...rec, owner, conv, from, msgId: rec.id, id: `${from}\n${rec.id}`, key: keyOf(owner, conv, from, rec.id) };
    if (full.status === undefined) full.status = rec.dir === 'in' ? 'received' : rec.delivered ? 'delivered' : 'sent';
    return full;
  }

  /**
   * Stores a message; one with the same (conversation, sender, id) is overwritten (a re-sent
   * message stays one).
   * @param {NewRecord} rec
   * @returns {Promise<ChatRecord>}
   */
  async add(rec) {
    const full = ChatStore.#record(this.owner, rec);
    const tx = this.db.transaction(STORE, 'readwrite');
    tx.objectStore(STORE).put(full);
    await committed(tx);
    return full;
  }

  /**
   * Stores a received message unless it is already there: at-least-once delivery brings the
   * same (sender, id) again after a lost acknowledgement. Resolves with the stored record, or
   * null for a duplicate.
   * @param {NewRecord} rec
   * @returns {Promise<ChatRecord | null>}
   */
  async addIncoming(rec) {
    const full = ChatStore.#record(this.owner, rec);
    const tx = this.db.transaction(STORE, 'readwrite');
    const req = tx.objectStore(STORE).add(full);
    let duplicate = false;
    req.onerror = (ev) => {
      if (req.error?.name === 'ConstraintError') {
        duplicate = true;
        ev.preventDefault(); // keep the transaction
        ev.stopPropagation();
      }
    };
    await committed(tx);
    return duplicate ? null : full;
  }

  /**
   * Changes fields of one message; resolves with the new record (null if there is none).
   * @param {Target} target @param {string} from @param {string} id
   * @param {Partial<Pick<ChatRecord, 'status'|'delivered'|'error'|'ts'>>} patch
   * @returns {Promise<ChatRecord | null>}
   */
  async update(target, from, id, patch) {
    const tx = this.db.transaction(STORE, 'readwrite');
    const store = tx.objectStore(STORE);
    const rec = /** @type {ChatRecord | undefined} */ (await done(store.get(keyOf(this.owner, convOf(target), from, id))));
    /** @type {ChatRecord | null} */
    let next = null;
    if (rec) {
      next = { ...rec, ...patch };
      if (patch.error === undefined && 'error' in next && patch.status !== 'failed') delete next.error;
      // A message already delivered does not go back to sent/stored (answers may cross).
      if (rec.status === 'delivered' && patch.status && patch.status !== 'delivered') next.status = 'delivered';
      store.put(next);
    }
    await committed(tx);
    return next;
  }

  /**
   * One message. @param {Target} target @param {string} from @param {string} id
   * @returns {Promise<ChatRecord | null>}
   */
  async get(target, from, id) {
    const tx = this.db.transaction(STORE, 'readonly');
    const rec = await done(tx.objectStore(STORE).get(keyOf(this.owner, convOf(target), from, id)));
    return rec ?? null;
  }

  /**
   * Marks a sent message delivered.
   * @param {string} contact @param {string} id the message id given to `add`
   */
  async markDelivered(contact, id) {
    await this.update(contact, this.owner, id, { delivered: true, status: 'delivered' });
  }

  /**
   * One page of a conversation, newest first, strictly older than `before`.
   * @param {Target} target  a contact's name or `{room}`
   * @param {{before?: {ts:number, id:string}, limit?: number}} [opts] `before` is the last
   *   record of the previous page (omit for the newest page)
   * @returns {Promise<ChatRecord[]>}
   */
  async page(target, opts = {}) {
    const limit = opts.limit ?? 50;
    const conv = convOf(target);
    const lower = [this.owner, conv, -Infinity, ''];
    const range = opts.before
      ? IDBKeyRange.bound(lower, [this.owner, conv, opts.before.ts, opts.before.id], false, true)
      : IDBKeyRange.bound(lower, [this.owner, conv, Infinity, '\uffff'], false, false);
    const tx = this.db.transaction(STORE, 'readonly');
    const index = tx.objectStore(STORE).index(INDEX);
    /** @type {ChatRecord[]} */
    const out = [];
    await new Promise((resolve, reject) => {
      const req = index.openCursor(range, 'prev');
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const cur = req.result;
        if (!cur || out.length >= limit) return resolve(undefined);
        out.push(/** @type {ChatRecord} */ (cur.value));
        cur.continue();
      };
    });
    return out;
  }

  /**
   * Conversations of one kind with history, most recent first.
   * @param {'u'|'r'} kind
   * @returns {Promise<{name:string, ts:number}[]>}
   */
  async #convs(kind) {
    const tx = this.db.transaction(STORE, 'readonly');
    const index = tx.objectStore(STORE).index(INDEX);
    const range = IDBKeyRange.bound([this.owner, `${kind}\n`, -Infinity, ''], [this.owner, `${kind}\n\uffff`, Infinity, '\uffff']);
    /** @type {Map<string, number>} */
    const last = new Map();
    await new Promise((resolve, reject) => {
      const req = index.openCursor(range);
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const cur = req.result;
        if (!cur) return resolve(undefined);
        const v = /** @type {ChatRecord} */ (cur.value);
        const name = v.conv.slice(2);
        last.set(name, Math.max(last.get(name) ?? 0, v.ts));
        cur.continue();
      };
    });
    return [...last].map(([name, ts]) => ({ name, ts })).sort((a, b) => b.ts - a.ts);
  }

  /**
   * Contacts with history, most recent conversation first.
   * @returns {Promise<{contact:string, ts:number}[]>}
   */
  async contacts() {
    return (await this.#convs('u')).map(({ name, ts }) => ({ contact: name, ts }));
  }

  /**
   * Rooms with history, most recent first.
   * @returns {Promise<{room:string, ts:number}[]>}
   */
  async rooms() {
    return (await this.#convs('r')).map(({ name, ts }) => ({ room: name, ts }));
  }

  /** Deletes a conversation. @param {Target} target */
  async clear(target) {
    const conv = convOf(target);
    const tx = this.db.transaction(STORE, 'readwrite');
    const index = tx.objectStore(STORE).index(INDEX);
    const range = IDBKeyRange.bound([this.owner, conv, -Infinity, ''], [this.owner, conv, Infinity, '\uffff']);
    const req = index.openCursor(range);
    req.onsuccess = () => {
      const cur = req.result;
      if (cur) {
        cur.delete();
        cur.continue();
      }
    };
    await committed(tx);
  }

  close() {
    this.db.close();
  }
}
