// @ts-check
/**
 * @file A room's group call (contract section 8: "group calls use ordinary ROAP between
 * members"): a full mesh, every participant connected to every other one by a `RoapPeer` with
 * its data channels, up to `maxMembers` (6) people.
 *
 * Who is in the call travels as room messages of content type `CALL_CONTENT_TYPE` with the
 * body `{"call":"join"|"here"|"leave"}` (not stored, not shown in the room's chat). Glare is
 * avoided by a fixed rule: of two participants, the one whose user id sorts first
 * (`shouldOffer`) sends the Offer. A newcomer announces `join`; a participant that sorts first
 * calls it at once, one that sorts after it answers `here`, so that the newcomer learns of it
 * and calls. Each pair therefore has exactly one Offer. The call's ROAP sessions have ids
 * starting with `groupSessionPrefix(room)`, so that the page's 1:1 `PeerManager` and each
 * room's call manager split the client's ROAP messages between them.
 */

import { PeerManager, newSessionID } from './roap-peer.js';

/** @typedef {import('./signal-client.js').SignalClient} SignalClient */
/** @typedef {import('./roap-peer.js').RoapPeer} RoapPeer */

/** Content type of the room messages that say who is in the call. */
export const CALL_CONTENT_TYPE = 'application/vnd.signal-demo.call+json';

/** Largest call (the mesh grows as n·(n-1)/2 connections). */
export const MAX_CALL_MEMBERS = 6;

/**
 * Whether `me` sends the Offer to `other` (the one whose id sorts first does): both sides
 * compute the same answer, so a pair never offers to each other at once.
 * @param {string} me @param {string} other
 */
export function shouldOffer(me, other) {
  return me < other;
}

/** The start of every ROAP session id of `room`'s call (unambiguous for every room id). @param {string} room */
export function groupSessionPrefix(room) {
  return `g${room.length}:${room}:`;
}

/** Whether a ROAP session id belongs to some room's call. @param {string} sessionID */
export function isGroupSession(sessionID) {
  return /^g\d+:/.test(sessionID);
}

/**
 * Parses a call announcement; null if `body` is not one.
 * @param {string} body
 * @returns {'join'|'here'|'leave'|null}
 */
export function parseAnnouncement(body) {
  try {
    const v = JSON.parse(body);
    return v && (v.call === 'join' || v.call === 'here' || v.call === 'leave') ? v.call : null;
  } catch {
    return null;
  }
}

/**
 * One room's group call. Events: `change` (participants or a connection changed), `peer`
 * (CustomEvent `{peer}`: a connection to a participant started), `error` (CustomEvent
 * `{text}`).
 */
export class GroupCall extends EventTarget {
  /**
   * @param {{client:SignalClient, room:string, user:string, rtcConfig?:RTCConfiguration,
   *   maxMembers?:number, isMember?:(user:string) => boolean}} opts
   */
  constructor(opts) {
    super();
    this.client = opts.client;
    this.room = opts.room;
    this.user = opts.user;
    this.maxMembers = opts.maxMembers ?? MAX_CALL_MEMBERS;
    this.isMember = opts.isMember ?? (() => true);
    /** we are in the call */
    this.active = false;
    /** the other users known to be in the call @type {Set<string>} */
    this.participants = new Set();
    const prefix = groupSessionPrefix(this.room);
    this.manager = new PeerManager(this.client, {
      rtcConfig: opts.rtcConfig,
      owns: (sid) => sid.startsWith(prefix),
      newSessionID: () => prefix + newSessionID(),
      // Only while we are in the call, and only from members of the room.
      accept: (remote) => this.active && this.isMember(remote) && this.#roomFor(remote),
    });
    this.manager.addEventListener('peer', (ev) => {
      const { peer } = /** @type {CustomEvent} */ (ev).detail;
      this.participants.add(peer.remote);
      for (const t of ['state', 'open', 'closed']) peer.addEventListener(t, () => this.#changed());
      this.dispatchEvent(new CustomEvent('peer', { detail: { peer } }));
      this.#changed();
    });
    this.manager.addEventListener('callerror', (ev) => {
      this.dispatchEvent(new CustomEvent('error', { detail: { text: /** @type {CustomEvent} */ (ev).detail.text } }));
    });
  }

  /** Whether one more participant fits. @param {string} remote */
  #roomFor(remote) {
    return this.participants.has(remote) || this.participants.size + 1 < this.maxMembers;
  }

  /** The connection to `remote`, if any. @param {string} remote @returns {RoapPeer | undefined} */
  peer(remote) {
    return this.manager.peers.get(remote);
  }

  /** Joins the call: announces it; calls every known participant we offer to. */
  join() {
    if (this.active) return;
    if (this.participants.size + 1 > this.maxMembers) {
      throw new Error(`The call in ${this.room} is full (at most ${this.maxMembers} people).`);
    }
    this.active = true;
    this.#announce('join');
    for (const p of this.participants) if (shouldOffer(this.user, p)) this.manager.call(p);
    this.#changed();
  }

  /** Announces again that we are in the call (after a session reset rejoined the room). */
  reannounce() {
    if (this.active) this.#announce('join');
  }

  /** Leaves the call: hangs up every connection and tells the room. */
  leave() {
    if (!this.active) return;
    this.active = false;
    this.#announce('leave');
    this.manager.closeAll();
    this.#changed();
  }

  /**
   * A call announcement from `from` in the room.
   * @param {string} from @param {'join'|'here'|'leave'} kind
   */
  onAnnouncement(from, kind) {
    if (from === this.user) return;
    if (kind === 'leave') {
      this.#gone(from);
      return;
    }
    this.participants.add(from);
    if (this.active) {
      if (shouldOffer(this.user, from)) {
        const existing = this.manager.peers.get(from);
        if (!existing || existing.state === 'closed') this.manager.call(from);
      } else if (kind === 'join') {
        // It sorts first: it offers once it knows we are here.
        this.#announce('here');
      }
    }
    this.#changed();
  }

  /** `user` left the room (or the call). @param {string} user */
  memberLeft(user) {
    this.#gone(user);
  }

  /** @param {string} user */
  #gone(user) {
    this.participants.delete(user);
    this.manager.hangup(user);
    this.#changed();
  }

  /** Ends everything (we left the room). */
  close() {
    this.active = false;
    this.manager.closeAll();
    this.participants.clear();
    this.#changed();
  }

  /** @param {'join'|'here'|'leave'} kind */
  #announce(kind) {
    const id = `call-${newSessionID()}`;
    this.client.sendRoomMessage(this.room, id, JSON.stringify({ call: kind }), { contentType: CALL_CONTENT_TYPE }).catch((e) => {
      this.dispatchEvent(new CustomEvent('error', { detail: { text: e instanceof Error ? e.message : String(e) } }));
    });
  }

  #changed() {
    this.dispatchEvent(new Event('change'));
  }
}
