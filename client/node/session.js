'use strict';
/**
 * The Session control stream and waiting on rounds; mirrors
 * fedgrpc/client/session.py and rounds.py. Every wait re-checks its
 * condition on each event, so an event that arrived before a wait began is
 * never missed, and every wait is bounded by a timeout.
 */

const { rpcError } = require('./errors.js');

/** Closed rounds remembered; a client only ever asks about its recent ones. */
const MAX_CLOSED_ROUNDS = 1024;

/**
 * The Session stream: SessionOpen, a heartbeat every `heartbeatMs` (or the
 * coordinator's RoundConfig.heartbeat_interval_s, if shorter), round events
 * collected for `waitForRound` / `waitForRoundClosed`, SessionLeave on
 * `close()`. The coordinator drops a session silent for its
 * session_timeout_s, which it sizes from its own heartbeat interval.
 */
class Session {
  constructor(client, federation, { heartbeatMs = 5000 } = {}) {
    const announcedS = Number(federation.roundConfig?.heartbeat_interval_s || 0);
    const periodMs = announcedS > 0 ? Math.min(heartbeatMs, announcedS * 1000) : heartbeatMs;
    this.latestStarted = null;
    this.closed = new Map();
    this.modelVersion = federation.modelVersion;
    /** The run ended (max_rounds): no round opens again; stop after the final pull. */
    this.runFinished = Boolean(federation.runFinished);
    this.shutdownReason = null;
    this.failure = null;
    this._closing = false;
    this._waiters = new Set();
    this._call = client.Session();
    this._finished = false;
    this._ended = new Promise((resolve) => {
      this._call.on('status', (status) => {
        this._finished = true;
        clearInterval(this._heartbeat); // nothing to keep alive any more
        resolve(status);
      });
    });
    this._call.on('data', (message) => this._dispatch(message));
    this._call.on('error', (err) => {
      if (!this._closing) this._record(() => (this.failure = rpcError('Session', err)));
    });
    this._call.on('end', () => {
      if (!this._closing && !this.failure) {
        this._record(() => (this.failure = new Error('the coordinator ended the session stream')));
      }
    });
    const { clientId, sessionToken } = federation;
    this._call.write({ open: { client_id: clientId, session_token: sessionToken } });
    this._heartbeat = setInterval(() => {
      this._call.write({ heartbeat: { sent_unix_s: Date.now() / 1000 } });
    }, periodMs);
  }

  _dispatch(message) {
    this._record(() => {
      if (message.event === 'round_started') {
        this.latestStarted = message.round_started;
        this.modelVersion = Math.max(this.modelVersion, message.round_started.base_version);
      } else if (message.event === 'round_closed') {
        const closed = message.round_closed;
        this.closed.set(closed.round_id, closed);
        if (this.closed.size > MAX_CLOSED_ROUNDS) this.closed.delete(this.closed.keys().next().value);
        if (closed.outcome === 'ROUND_OUTCOME_APPLIED') {
          this.modelVersion = Math.max(this.modelVersion, closed.model_version);
        }
        if (closed.run_finished) this.runFinished = true;
      } else if (message.event === 'shutdown') {
        this.shutdownReason = message.shutdown.reason || 'no reason given';
      }
    });
  }

  _record(change) {
    change();
    for (const check of this._waiters) check();
  }

  /** Resolve with `ready()`'s first non-null value, re-checked on every event. */
  waitFor(ready, what, timeoutMs) {
    return new Promise((resolve, reject) => {
      const done = (fn, value) => {
        clearTimeout(timer);
        this._waiters.delete(check);
        fn(value);
      };
      const check = () => {
        const value = ready();
        if (value !== null) return done(resolve, value);
        if (this.shutdownReason !== null) {
          const reason = this.shutdownReason;
          done(reject, new Error(`the coordinator is shutting down (${reason}) while waiting for ${what}`));
        } else if (this.failure !== null) {
          done(reject, this.failure);
        }
      };
      const timedOut = () => {
        const seconds = timeoutMs / 1000;
        done(reject, new Error(`waited ${seconds} s for ${what} without news from the coordinator`));
      };
      const timer = setTimeout(timedOut, timeoutMs);
      this._waiters.add(check);
      check();
    });
  }

  /** Send SessionLeave, end our side, wait (bounded) for the coordinator to end it. */
  async close(reason = 'client closed', timeoutMs = 5000) {
    if (this._closing) return;
    this._closing = true;
    clearInterval(this._heartbeat);
    if (!this._finished) {
      this._call.write({ leave: { reason } });
      this._call.end();
    }
    let timer;
    const timeout = new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)));
    await Promise.race([this._ended, timeout]);
    clearTimeout(timer);
    this._call.cancel();
  }
}

function openSession(client, federation, options) {
  return new Session(client, federation, options);
}

/**
 * Wait for an open round on `baseVersion` that selected this client
 * (RoundStarted.not_selected is false). Resolves to its RoundStarted
 * ({round_id, base_version}), to `{stale: version}` when a newer model
 * was applied meanwhile (pull it before pushing), or to `{finished: version}`
 * once the run ended (max_rounds) and the model held is final.
 */
function waitForRound(session, baseVersion, timeoutMs) {
  return session.waitFor(
    () => {
      if (session.modelVersion > baseVersion) return { stale: session.modelVersion };
      if (session.runFinished) return { finished: session.modelVersion };
      const started = session.latestStarted;
      // A round that left this client out (client selection): wait for one
      // that selects it; if the model moves meanwhile, the caller pulls.
      if (started && !session.closed.has(started.round_id) && started.base_version === baseVersion
          && !started.not_selected) {
        return started;
      }
      return null;
    },
    `a round on model version ${baseVersion}`,
    timeoutMs,
  );
}

/** Wait for round `roundId` to close; resolves to its RoundClosed. */
function waitForRoundClosed(session, roundId, timeoutMs) {
  return session.waitFor(() => session.closed.get(roundId) ?? null, `round ${roundId} to close`, timeoutMs);
}

module.exports = { Session, openSession, waitForRound, waitForRoundClosed };
