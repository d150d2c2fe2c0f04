// @ts-check
/**
 * @file ROAP over the signaling client: `RoapPeer` wraps one RTCPeerConnection and runs the
 * Offer/Answer/Ok exchange (seq counter), trickles candidates both ways (null = end of
 * candidates) and ends with Shutdown; `PeerManager` routes a client's messages to the peer of
 * each remote user, starts calls, accepts incoming ones and resolves glare by tieBreaker.
 *
 * Every peer connection carries two pre-negotiated data channels: `chat` (id 0, text) and
 * `files` (id 1, binary, the chunk protocol of file-transfer.js). Its ICE servers are those of
 * the signaling client's latest login (STUN, TURN with short-lived credentials).
 *
 * Glare (both sides send an Offer before either answered): the Offer with the higher tieBreaker
 * wins. The winner answers the loser's Offer with Error CONFLICT and keeps waiting for its own
 * Answer; the loser drops its own Offer and answers the winner's. Equal tieBreakers: both send
 * DOUBLECONFLICT and both offer again, after a random delay, with a fresh tieBreaker.
 */

import { describeError } from './signal-client.js';

/** @typedef {import('./signal-client.js').SignalClient} SignalClient */
/** @typedef {import('./signal-client.js').RoapMessage} RoapMessage */

/**
 * @typedef {'new'|'offering'|'answering'|'connecting'|'connected'|'closed'} PeerState
 */

/** @returns {number} a random u32 */
export function randomTieBreaker() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0];
}

/** @returns {string} a fresh session id */
export function newSessionID() {
  const a = new Uint8Array(12);
  crypto.getRandomValues(a);
  return Array.from(a, (x) => x.toString(16).padStart(2, '0')).join('');
}

/**
 * What to do with an Offer that arrives from a peer we are offering to ourselves.
 * @param {number} mine our tieBreaker
 * @param {number | undefined} theirs theirs (absent = 0)
 * @returns {'win'|'yield'|'double'}
 */
export function resolveGlare(mine, theirs) {
  const t = theirs ?? 0;
  if (mine > t) return 'win';
  if (mine < t) return 'yield';
  return 'double';
}

/**
 * One call with one remote user. Events: `state` (CustomEvent `{state}`), `open` (both data
 * channels open), `closed` (CustomEvent `{by:'local'|'peer'|'error', reason, text?}`).
 */
export class RoapPeer extends EventTarget {
  /**
   * @param {{client:SignalClient, remote:string, sessionID:string, rtcConfig?:RTCConfiguration,
   *   answerTimeoutMs?:number}} opts
   */
  constructor(opts) {
    super();
    this.client = opts.client;
    this.remote = opts.remote;
    this.sessionID = opts.sessionID;
    this.answerTimeoutMs = opts.answerTimeoutMs ?? 30000;
    /** @type {PeerState} */
    this.state = 'new';
    /** seq of the current offer/answer exchange */
    this.seq = 0;
    this.tieBreaker = 0;
    /** we sent the Offer of the current exchange */
    this.initiator = false;
    // The ICE servers of the client's latest login (fresh TURN credentials), unless the app
    // gives its own in rtcConfig (which may also set e.g. iceTransportPolicy).
    this.pc = new RTCPeerConnection({ iceServers: opts.client.iceServers ?? [], ...opts.rtcConfig });
    this.chat = this.pc.createDataChannel('chat', { negotiated: true, id: 0, ordered: true });
    this.files = this.pc.createDataChannel('files', { negotiated: true, id: 1, ordered: true });
    this.files.binaryType = 'arraybuffer';
    /** local candidates gathered before our description was sent */
    /** @type {(import('./signal-client.js').IceCandidateInit | null)[]} */
    this.localPending = [];
    this.descriptionSent = false;
    /** remote candidates that arrived before the remote description */
    /** @type {(RTCIceCandidateInit | null)[]} */
    this.remotePending = [];
    /** messages are handled one after the other */
    this.chain = Promise.resolve();
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.answerTimer = undefined;
    this.channelsOpen = 0;

    this.pc.onicecandidate = (ev) => {
      const c = /** @type {import('./signal-client.js').IceCandidateInit | null} */ (ev.candidate ? ev.candidate.toJSON() : null);
      if (c && !c.candidate) return; // an empty candidate string is Chromium's own end marker
      if (!this.descriptionSent) this.localPending.push(c);
      else this.#sendCandidate(c);
    };
    this.pc.onconnectionstatechange = () => {
      const s = this.pc.connectionState;
      if (s === 'connected') this.#setState('connected');
      else if (s === 'failed') this.close({ by: 'error', reason: 'the direct connection failed', notify: true });
    };
    for (const ch of [this.chat, this.files]) {
      ch.addEventListener('open', () => {
        this.channelsOpen += 1;
        if (this.channelsOpen === 2) this.dispatchEvent(new Event('open'));
      });
    }
  }

  /** Whether the call ended (a method, so that checks after an await are not narrowed away). */
  isClosed() {
    return this.state === 'closed';
  }

  /** @param {PeerState} state */
  #setState(state) {
    if (this.state === state || this.state === 'closed') return;
    // The data channels may open before the signaling exchange finishes: never go back.
    if (this.state === 'connected' && state === 'connecting') return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state } }));
  }

  /** @param {import('./signal-client.js').IceCandidateInit | null} c */
  #sendCandidate(c) {
    try {
      this.client.sendCandidate(this.remote, this.sessionID, c, { seq: this.seq });
    } catch (e) {
      this.close({ by: 'error', reason: e instanceof Error ? e.message : String(e), notify: false });
    }
  }

  #flushLocal() {
    this.descriptionSent = true;
    const pending = this.localPending;
    this.localPending = [];
    for (const c of pending) this.#sendCandidate(c);
  }

  async #flushRemote() {
    const pending = this.remotePending;
    this.remotePending = [];
    for (const c of pending) await this.#addRemote(c);
  }

  /** @param {RTCIceCandidateInit | null} c */
  async #addRemote(c) {
    try {
      // No argument: end of candidates.
      if (c) await this.pc.addIceCandidate(c);
      else await this.pc.addIceCandidate();
    } catch {
      // A candidate we cannot use is not fatal: ICE goes on with the others.
    }
  }

  /**
   * Starts (or restarts, after DOUBLECONFLICT) our Offer.
   * @returns {Promise<void>}
   */
  offer() {
    return this.#enqueue(async () => {
      if (this.isClosed()) return;
      this.initiator = true;
      this.seq += 1;
      this.tieBreaker = randomTieBreaker();
      this.#setState('offering');
      const offer = await this.pc.createOffer();
      await this.pc.setLocalDescription(offer);
      if (this.isClosed()) return;
      this.client.sendOffer(this.remote, this.sessionID, this.pc.localDescription?.sdp ?? offer.sdp ?? '', {
        seq: this.seq,
        tieBreaker: this.tieBreaker,
      });
      this.#flushLocal();
      this.#armAnswerTimer();
    });
  }

  #armAnswerTimer() {
    this.#clearAnswerTimer();
    this.answerTimer = setTimeout(() => {
      if (this.state === 'offering') {
        this.close({ by: 'error', reason: `${this.remote} did not answer`, text: describeError('TIMEOUT', { peer: this.remote }), notify: true });
      }
    }, this.answerTimeoutMs);
  }

  #clearAnswerTimer() {
    if (this.answerTimer !== undefined) clearTimeout(this.answerTimer);
    this.answerTimer = undefined;
  }

  /**
   * Handles one relayed message of this session (in order).
   * @param {RoapMessage} msg
   * @returns {Promise<void>}
   */
  handle(msg) {
    return this.#enqueue(() => this.#handle(msg));
  }

  /** @param {() => Promise<void>} fn */
  #enqueue(fn) {
    const next = this.chain.then(fn).catch((e) => {
      this.close({ by: 'error', reason: e instanceof Error ? e.message : String(e), notify: true, errorType: 'FAILED' });
    });
    this.chain = next;
    return next;
  }

  /** @param {RoapMessage} msg */
  async #handle(msg) {
    if (this.isClosed()) return;
    switch (msg.type) {
      case 'Offer': {
        // First offer of an incoming call, or a renegotiation by the peer.
        this.initiator = false;
        this.seq = msg.seq ?? this.seq + 1;
        this.#setState('answering');
        try {
          if (this.pc.signalingState === 'have-local-offer') {
            await this.pc.setLocalDescription({ type: 'rollback' });
          }
          await this.pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
        } catch (e) {
          this.close({
            by: 'error',
            reason: `unusable offer: ${e instanceof Error ? e.message : e}`,
            errorType: 'NOMATCH',
            notify: true,
          });
          return;
        }
        await this.#flushRemote();
        const answer = await this.pc.createAnswer();
        await this.pc.setLocalDescription(answer);
        if (this.isClosed()) return;
        this.client.sendAnswer(this.remote, this.sessionID, this.pc.localDescription?.sdp ?? answer.sdp ?? '', { seq: this.seq });
        this.#flushLocal();
        return;
      }
      case 'Answer': {
        if (!this.initiator || this.pc.signalingState !== 'have-local-offer' || (msg.seq !== undefined && msg.seq !== this.seq)) {
          return; // stale (an older exchange) or unexpected: ignore
        }
        this.#clearAnswerTimer();
        await this.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
        this.client.sendOk(this.remote, this.sessionID, { seq: this.seq });
        this.#setState(this.pc.connectionState === 'connected' ? 'connected' : 'connecting');
        await this.#flushRemote();
        return;
      }
      case 'Ok':
        if (!this.initiator && this.state === 'answering') {
          this.#setState(this.pc.connectionState === 'connected' ? 'connected' : 'connecting');
        }
        return;
      case 'Candidate':
        if (!this.pc.remoteDescription) this.remotePending.push(msg.candidate);
        else await this.#addRemote(msg.candidate);
        return;
      case 'Shutdown':
        this.close({ by: 'peer', reason: `${this.remote} hung up`, notify: false });
        return;
      case 'Error': {
        if (msg.errorType === 'DOUBLECONFLICT' && this.initiator && this.state === 'offering') {
          // Both chose the same tieBreaker: offer again after a random pause.
          await this.pc.setLocalDescription({ type: 'rollback' });
          this.#clearAnswerTimer();
          await new Promise((r) => setTimeout(r, 50 + Math.random() * 250));
          if (this.isClosed()) return;
          void this.offer();
          return;
        }
        if (msg.errorType === 'CONFLICT') {
          // We lost the glare: the manager already answered the winner's Offer elsewhere.
          this.close({ by: 'peer', reason: 'glare lost', notify: false, quiet: true });
          return;
        }
        const text = describeError(msg.errorType, { peer: this.remote, description: msg.description });
        this.close({ by: 'error', reason: msg.description ?? msg.errorType, text, errorType: msg.errorType, notify: false, received: true });
        return;
      }
      default:
        return;
    }
  }

  /**
   * Ends the call. `notify`: tell the peer (Shutdown, or Error `errorType`).
   * @param {{by?:'local'|'peer'|'error', reason?:string, text?:string, notify?:boolean,
   *   errorType?:import('./signal-client.js').ErrorType, received?:boolean, quiet?:boolean}} [o]
   */
  close(o = {}) {
    if (this.isClosed()) return;
    const by = o.by ?? 'local';
    const notify = o.notify ?? true;
    this.#clearAnswerTimer();
    if (notify) {
      try {
        if (o.errorType && !o.received) this.client.sendError(this.remote, this.sessionID, o.errorType, { seq: this.seq, description: o.reason });
        else this.client.sendShutdown(this.remote, this.sessionID, { seq: this.seq });
      } catch {
        // not connected: the peer's connection fails on its own
      }
    }
    this.state = 'closed';
    try {
      this.chat.close();
      this.files.close();
      this.pc.close();
    } catch {
      // already closed
    }
    this.dispatchEvent(new CustomEvent('state', { detail: { state: 'closed' } }));
    this.dispatchEvent(
      new CustomEvent('closed', {
        detail: { by, reason: o.reason ?? '', text: o.text, errorType: o.errorType, quiet: o.quiet ?? false },
      }),
    );
  }
}

/**
 * All calls of one signaling client, one per remote user. Events:
 * - `peer`: CustomEvent `{peer: RoapPeer, incoming: boolean}` when a call starts
 * - `callerror`: CustomEvent `{remote, text, errorType}`: a call could not go on (plain words)
 * - `servererror`: CustomEvent `{text, errorType, remote}`: a server error not tied to a call
 */
export class PeerManager extends EventTarget {
  /**
   * @param {SignalClient} client
   * @param {{rtcConfig?:RTCConfiguration, accept?:(remote:string) => boolean, answerTimeoutMs?:number,
   *   owns?:(sessionID:string) => boolean, reportSessionless?:boolean, newSessionID?:() => string}} [opts]
   *   `owns`: the sessions this manager handles (default all); several managers on one client
   *   (1:1 calls, a room's group call) split the sessions between them by their ids, and the
   *   one with `reportSessionless` reports server errors that name no session.
   *   `newSessionID`: ids of the calls it starts.
   */
  constructor(client, opts = {}) {
    super();
    this.client = client;
    this.opts = opts;
    /** @type {Map<string, RoapPeer>} by remote user */
    this.peers = new Map();
    /**
     * Sessions that ended here recently (`remote|sessionID`), bounded: late messages for them,
     * such as one OFFLINE per candidate already sent, are dropped without a second report.
     * @type {Set<string>}
     */
    this.ended = new Set();
    /** @param {Event} ev */
    const route = (ev) => this.#route(/** @type {any} */ (ev).message);
    for (const t of ['Offer', 'Answer', 'Ok', 'Candidate', 'Shutdown', 'Error']) client.addEventListener(t, route);
  }

  /**
   * Calls `remote` (or returns the call already going on with them).
   * @param {string} remote
   * @returns {RoapPeer}
   */
  call(remote) {
    const existing = this.peers.get(remote);
    if (existing && existing.state !== 'closed') return existing;
    const peer = this.#newPeer(remote, (this.opts.newSessionID ?? newSessionID)(), false);
    void peer.offer();
    return peer;
  }

  /** @param {string} remote */
  hangup(remote) {
    this.peers.get(remote)?.close({ by: 'local', reason: 'hung up', notify: true });
  }

  closeAll() {
    for (const p of [...this.peers.values()]) p.close({ by: 'local', reason: 'leaving', notify: true });
  }

  /** @param {string} remote @param {string} sessionID @param {boolean} incoming */
  #newPeer(remote, sessionID, incoming) {
    const peer = new RoapPeer({
      client: this.client,
      remote,
      sessionID,
      rtcConfig: this.opts.rtcConfig,
      answerTimeoutMs: this.opts.answerTimeoutMs,
    });
    this.peers.set(remote, peer);
    peer.addEventListener('closed', (ev) => {
      if (this.peers.get(remote) === peer) this.peers.delete(remote);
      this.ended.add(`${remote}|${sessionID}`);
      if (this.ended.size > 256) this.ended.delete(/** @type {string} */ (this.ended.values().next().value));
      const d = /** @type {CustomEvent} */ (ev).detail;
      if (d.by === 'error' && !d.quiet) {
        this.dispatchEvent(new CustomEvent('callerror', { detail: { remote, text: d.text ?? d.reason, errorType: d.errorType } }));
      }
    });
    this.dispatchEvent(new CustomEvent('peer', { detail: { peer, incoming } }));
    return peer;
  }

  /** @param {RoapMessage} msg */
  #route(msg) {
    if (!('to' in msg)) return;
    // Errors answering a chat message (`id`) or a room request (`room`) are not about calls.
    if (msg.type === 'Error' && ('id' in msg || 'room' in msg)) return;
    const remote = msg.from;
    if (!remote) return;
    const sessionID = msg.sessionID;
    // Several managers on one client: each handles its own sessions; errors without a session
    // are reported by the one with `reportSessionless`.
    if (this.opts.owns && (sessionID === undefined ? !this.opts.reportSessionless : !this.opts.owns(sessionID))) return;
    const peer = this.peers.get(remote);
    if (sessionID === undefined) {
      // Only a server error about an unreadable frame lacks a session: not about a call.
      if (msg.type === 'Error') {
        const text = describeError(msg.errorType, { peer: remote, description: msg.description });
        this.dispatchEvent(new CustomEvent('servererror', { detail: { remote, text, errorType: msg.errorType } }));
      }
      return;
    }

    if (this.ended.has(`${remote}|${sessionID}`)) return; // that call is over

    if (msg.type === 'Error' && msg.origin === 'server') {
      const text = describeError(msg.errorType, { peer: remote, description: msg.description });
      if (peer && peer.sessionID === sessionID) {
        peer.close({ by: 'error', reason: msg.description ?? msg.errorType, text, errorType: msg.errorType, notify: false, received: true });
      } else {
        this.dispatchEvent(new CustomEvent('servererror', { detail: { remote, text, errorType: msg.errorType } }));
      }
      return;
    }

    if (peer && peer.sessionID === sessionID) {
      void peer.handle(msg);
      return;
    }

    if (msg.type !== 'Offer') return; // for a session we no longer have: nothing to do

    if (peer && peer.initiator && peer.state === 'offering') {
      const outcome = resolveGlare(peer.tieBreaker, msg.tieBreaker);
      if (outcome === 'win') {
        this.#sendError(remote, sessionID, 'CONFLICT', msg.seq, 'glare: my offer has the higher tieBreaker');
        return;
      }
      if (outcome === 'double') {
        this.#sendError(remote, sessionID, 'DOUBLECONFLICT', msg.seq, 'glare: equal tieBreakers');
        return;
      }
      // We lose: drop our own offer and answer theirs.
      peer.close({ by: 'local', reason: 'glare lost', notify: false, quiet: true });
    } else if (peer) {
      // A new session from someone we have a call with (e.g. they reloaded): it replaces ours.
      peer.close({ by: 'local', reason: 'replaced by a new call', notify: false, quiet: true });
    }

    if (this.opts.accept && !this.opts.accept(remote)) {
      this.#sendError(remote, sessionID, 'REFUSED', msg.seq, 'call declined');
      return;
    }
    const incoming = this.#newPeer(remote, sessionID, true);
    void incoming.handle(msg);
  }

  /**
   * @param {string} remote @param {string} sessionID
   * @param {import('./signal-client.js').ErrorType} errorType
   * @param {number | undefined} seq @param {string} description
   */
  #sendError(remote, sessionID, errorType, seq, description) {
    try {
      this.client.sendError(remote, sessionID, errorType, { seq, description });
    } catch {
      // not connected: the caller's offer times out
    }
  }
}
