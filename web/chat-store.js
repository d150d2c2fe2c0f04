// @ts-check
/**
 * @file Chat history in IndexedDB: one record per message, per (owner, contact), indexed by
 * time, read back newest first one page at a time.
 *
 * Database `signal-chat`, store `messages` (key `id`), index `byContactTime` on
 * `[owner, contact, ts, id]`. `owner` is the logged-in user, so several users of one browser
 * profile keep separate histories.
 */

/**
 * @typedef {object} ChatRecord
 * @property {string} id        store key: `owner|contact|msgId`
 * @property {string} msgId     the message id chosen by its sender
 * @property {string} owner     the logged-in user this history belongs to
 * @property {string} contact   the other user
 * @property {'in'|'out'} dir   received or sent
 * @property {string} text
 * @property {number} ts        milliseconds since the epoch (the sender's clock)
 * @property {boolean} [delivered] sent messages: the peer acknowledged it
 */

const DB_NAME = 'signal-chat';
const DB_VERSION = 1;
const STORE = 'messages';
const INDEX = 'byContactTime';

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

export class ChatStore {
  /** @param {IDBDatabase} db @param {string} owner */
  constructor(db, owner) {
    this.db = db;
    this.owner = owner;
  }

  /**
   * Opens (creating if needed) the history of `owner`.
   * @param {string} owner
   * @param {IDBFactory} [idb]
   * @returns {Promise<ChatStore>}
   */
  static async open(owner, idb = globalThis.indexedDB) {
    const req = idb.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains(STORE)) {
        const store = db.createObjectStore(STORE, { keyPath: 'id' });
        store.createIndex(INDEX, ['owner', 'contact', 'ts', 'id']);
      }
    };
    const db = await done(req);
    return new ChatStore(db, owner);
  }

  /**
   * Stores a message (a record with the same id is overwritten: a re-sent message stays one).
   * @param {Omit<ChatRecord, 'owner'|'msgId'>} rec  `rec.id` is the sender's message id
   * @returns {Promise<ChatRecord>}
   */
  async add(rec) {
    /** @type {ChatRecord} */
    const full = { ...rec, owner: this.owner, msgId: rec.id, id: `${this.owner}|${rec.contact}|${rec.id}` };
    const tx = this.db.transaction(STORE, 'readwrite');
    tx.objectStore(STORE).put(full);
    await committed(tx);
    return full;
  }

  /**
   * Marks a sent message delivered.
   * @param {string} contact @param {string} id the message id given to `add`
   */
  async markDelivered(contact, id) {
    const tx = this.db.transaction(STORE, 'readwrite');
    const store = tx.objectStore(STORE);
    const key = `${this.owner}|${contact}|${id}`;
    const rec = await done(store.get(key));
    if (rec) store.put({ ...rec, delivered: true });
    await committed(tx);
  }

  /**
   * One page of the history with `contact`, newest first, strictly older than `before`.
   * @param {string} contact
   * @param {{before?: {ts:number, id:string}, limit?: number}} [opts] `before` is the last
   *   record of the previous page (omit for the newest page)
   * @returns {Promise<ChatRecord[]>}
   */
  async page(contact, opts = {}) {
    const limit = opts.limit ?? 50;
    const lower = [this.owner, contact, -Infinity, ''];
    const range = opts.before
      ? IDBKeyRange.bound(lower, [this.owner, contact, opts.before.ts, opts.before.id], false, true)
      : IDBKeyRange.bound(lower, [this.owner, contact, Infinity, '\uffff'], false, false);
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
   * Contacts with history, most recent conversation first.
   * @returns {Promise<{contact:string, ts:number}[]>}
   */
  async contacts() {
    const tx = this.db.transaction(STORE, 'readonly');
    const index = tx.objectStore(STORE).index(INDEX);
    const range = IDBKeyRange.bound([this.owner, '', -Infinity, ''], [this.owner, '\uffff', Infinity, '\uffff']);
    /** @type {Map<string, number>} */
    const last = new Map();
    await new Promise((resolve, reject) => {
      const req = index.openCursor(range);
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const cur = req.result;
        if (!cur) return resolve(undefined);
        const v = /** @type {ChatRecord} */ (cur.value);
        last.set(v.contact, Math.max(last.get(v.contact) ?? 0, v.ts));
        cur.continue();
      };
    });
    return [...last].map(([contact, ts]) => ({ contact, ts })).sort((a, b) => b.ts - a.ts);
  }

  /** Deletes the history with `contact`. @param {string} contact */
  async clear(contact) {
    const tx = this.db.transaction(STORE, 'readwrite');
    const index = tx.objectStore(STORE).index(INDEX);
    const range = IDBKeyRange.bound([this.owner, contact, -Infinity, ''], [this.owner, contact, Infinity, '\uffff']);
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
