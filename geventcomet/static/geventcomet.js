/*! geventcomet.js: the browser client for a geventcomet server. No dependencies.
 *
 *   var comet = new GeventComet.Client({url: ''});          // '' = the page's own server
 *   var sub = comet.subscribe(['news'], {
 *     onEvent: function (e) { console.log(e.channel, e.id, e.data); },
 *     onGap: function (info) { console.warn('missed events', info); },  // recovered: false
 *     onState: function (state, info) { console.log(state, info); },   // connecting/open/reconnecting/closed
 *     onError: function (err) { console.error('stopped:', err); }      // 400/401/403/404: no retry
 *     // every retry says why: onState('reconnecting', {reason, error, delay, attempt})
 *   });
 *   comet.publish('news', {text: 'hi'}).then(function (r) { console.log('sent as', r.id); });
 *   sub.close();
 *
 * Transports: 'longpoll' (GET /register, the default) or 'eventsource' (GET /stream).
 * Both resume from the opaque cursor, so a reconnect misses nothing the server still
 * holds; when it cannot (trimmed backlog, restarted memory backend) onGap is called
 * with {recovered: false} before the events that are left. Reconnects wait
 * min(maxDelay, minDelay * 2^attempt) * random() (full jitter), plus the server's
 * Retry-After when it sends one (503: shutting down, at capacity). A reply or event
 * that is not valid geventcomet JSON (a broken proxy, a server bug) is never skipped
 * and never retried at once: the cursor stays where it was, the error is reported
 * with the 'reconnecting' state (info.error, sub.lastError) and the retry backs off.
 *
 * Tokens (servers with --token-secret): {token: 'JWT'} or {token: function () { return
 * fetch('/comet-token').then(function (r) { return r.text(); }); }}. Polls and publishes send
 * it as 'Authorization: Bearer', EventSource as ?token=. A 401 when the token is a function
 * fetches a fresh one and retries at once (once; then with the usual backoff); a 403 with
 * auth 'client' (an old, unsigned client id) forgets the id and registers afresh, reporting
 * a gap for the old private channel. See docs/browser.md for the whole API.
 */
(function (root, factory) {
  'use strict';
  var api = factory();
  if (typeof module === 'object' && module.exports) module.exports = api;
  else root.GeventComet = api;
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  var DEFAULTS = {
    url: '',               // base URL of the server, without a trailing slash; '' = same origin
    transport: 'longpoll', // 'longpoll' or 'eventsource'
    timeout: 25,           // seconds the server holds a long-poll
    minDelay: 500,         // ms: the backoff's first ceiling
    maxDelay: 30000,       // ms: the backoff's largest ceiling
    token: '',             // bearer token: a string, or a function returning one (or a Promise of one)
    credentials: 'same-origin', // fetch credentials mode (cross-origin servers: 'include')
    publishRetries: 4      // extra tries for a publish after a network error or a 503
  };
  /** HTTP statuses after which retrying cannot help: the subscription stops. */
  var FATAL = {400: true, 401: true, 403: true, 404: true, 405: true};

  function merge(base, extra) {
    var out = {}, key;
    for (key in base) out[key] = base[key];
    for (key in extra || {}) if (extra[key] !== undefined) out[key] = extra[key];
    return out;
  }

  /** Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)). */
  function backoffDelay(attempt, base, cap, random) {
    return (random || Math.random)() * Math.min(cap, base * Math.pow(2, Math.min(attempt, 30)));
  }

  /** A Retry-After header (seconds or an HTTP date) in ms, or null. */
  function retryAfterMs(header, now) {
    if (header == null || header === '') return null;
    if (/^\d+$/.test(header.trim())) return parseInt(header, 10) * 1000;
    var at = Date.parse(header);
    return isNaN(at) ? null : Math.max(0, at - (now == null ? Date.now() : now));
  }

  /** The wait before reconnect number `attempt` (0 first): Retry-After, if any, plus backoff. */
  function reconnectDelay(attempt, retryAfter, options, random) {
    return (retryAfter || 0) + backoffDelay(attempt, options.minDelay, options.maxDelay, random);
  }

  function randomKey() {
    var bytes = new Uint8Array(16), i, out = '';
    if (typeof crypto !== 'undefined' && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
    for (i = 0; i < 16; i++) out += (bytes[i] + 256).toString(16).slice(1);
    return out;
  }

  function query(params) {
    var parts = [], key, i, value;
    for (key in params) {
      value = params[key];
      if (value == null) continue;
      if (!Array.isArray(value)) value = [value];
      for (i = 0; i < value.length; i++) parts.push(key + '=' + encodeURIComponent(String(value[i])));
    }
    return parts.join('&');
  }

  function parseJson(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  /** True for a well-formed event: {channel: string, id: integer >= 0, data}. */
  function isEvent(e) {
    return e !== null && typeof e === 'object' && typeof e.channel === 'string' &&
      typeof e.id === 'number' && e.id >= 0 && Math.floor(e.id) === e.id && 'data' in e;
  }

  /** True for a well-formed poll reply: checked whole before any of it is used. */
  function isPollReply(r) {
    if (r === null || typeof r !== 'object' || !Array.isArray(r.events) ||
        typeof r.cursor !== 'string' || typeof r.client !== 'string') return false;
    for (var i = 0; i < r.events.length; i++) if (!isEvent(r.events[i])) return false;
    return true;
  }

  /** What a reply that cannot be used looks like, for the error report. */
  function describeBody(text) {
    var shown = String(text).slice(0, 80);
    return shown.length < String(text).length ? shown + '...' : shown;
  }

  /** An error from the server (`status` set) or from the network (`status` 0). */
  function CometError(message, status, body) {
    var err = new Error(message);
    err.name = 'GeventCometError';
    err.status = status || 0;
    err.body = body || null;
    return err;
  }

  function later(fn) { setTimeout(fn, 0); }

  /** `cursor` without its private-channel part ('~@ID~SEQ'): that id was refused. */
  function withoutPrivate(cursor) {
    if (typeof cursor !== 'string') return cursor;
    var parts = cursor.split('~'), out = [parts[0]];
    for (var i = 1; i + 1 < parts.length; i += 2) {
      if (parts[i].charAt(0) !== '@') out.push(parts[i], parts[i + 1]);
    }
    return out.length > 1 ? out.join('~') : null;
  }

  // -- Tokens ----------------------------------------------------------------

  /**
   * Where the bearer token comes from: a fixed string, or a function returning a string
   * or a Promise of one. A function is asked once, then again only after the server
   * refused the token it gave (refresh): subscriptions sharing a Client share the token.
   */
  function TokenSource(token) {
    this.token = token;
    /** True when a refused token can be replaced by asking the function again. */
    this.refreshable = typeof token === 'function';
    this._current = null;
  }

  /** A Promise of the token to send ('' for none). */
  TokenSource.prototype.get = function () {
    if (!this.refreshable) return Promise.resolve(this.token || '');
    if (this._current) return this._current;
    var self = this, fn = this.token;
    var got = this._current = Promise.resolve().then(function () { return fn(); }).then(function (value) {
      got.value = value ? String(value) : '';
      return got.value;
    });
    got.catch(function () { if (self._current === got) self._current = null; });  // ask again next time
    return got;
  };

  /** A Promise of a token other than `refused`: a fresh one, unless another caller already got it. */
  TokenSource.prototype.refresh = function (refused) {
    var current = this._current;
    if (current && (!('value' in current) || current.value !== refused)) return current;
    this._current = null;
    return this.get();
  };

  function call(handler, self, args) {
    if (typeof handler !== 'function') return;
    try { handler.apply(self, args); } catch (e) { later(function () { throw e; }); }
  }

  // -- Client ---------------------------------------------------------------

  /** A connection to one server: options shared by its subscriptions and publishes. */
  function Client(options) {
    if (!(this instanceof Client)) return new Client(options);
    this.options = merge(DEFAULTS, options);
    /** The token every subscription and publish of this client sends (see TokenSource). */
    this.tokens = new TokenSource(this.options.token);
  }

  /**
   * Subscribe to one or more channels. `options` may hold the handlers (onEvent,
   * onGap, onState, onError), `since` (a cursor from `sub.cursor`, or an event id
   * such as 0 when there is exactly one channel: replay from there), `client` (a
   * client id to keep) and any Client option to override (transport, timeout, ...).
   */
  Client.prototype.subscribe = function (channels, options) {
    return new Subscription(this, typeof channels === 'string' ? [channels] : channels.slice(), options || {});
  };

  /** Publish `data` (any JSON value) to `channel`. Resolves to {channel, id, woken}. */
  Client.prototype.publish = function (channel, data, options) {
    return this._notify({channel: channel, data: data}, options || {});
  };

  /** Send `data` to one client's private channel (its id is `sub.client`). */
  Client.prototype.sendTo = function (clientId, data, options) {
    return this._notify({client: clientId, data: data}, options || {});
  };

  Client.prototype._notify = function (body, options) {
    var o = merge(this.options, options);
    var tokens = options.token !== undefined ? new TokenSource(options.token) : this.tokens;
    var key = o.idempotencyKey || randomKey();
    var payload = JSON.stringify(body), attempt = 0, refreshed = false;
    function send(token) {
      var headers = {'Content-Type': 'application/json', 'Idempotency-Key': key};
      if (token) headers.Authorization = 'Bearer ' + token;
      return fetch(o.url + '/notify', {method: 'POST', headers: headers, body: payload,
                                        credentials: o.credentials, cache: 'no-store'})
        .then(function (res) {
          return res.text().then(function (text) {
            var reply = parseJson(text);
            if (res.ok) return reply;
            var err = CometError((reply && reply.error) || ('HTTP ' + res.status), res.status, reply);
            err.retryAfter = retryAfterMs(res.headers.get('Retry-After'));
            err.token = token;
            throw err;
          });
        }, function (e) { throw CometError('network error: ' + e.message, 0); });
    }
    function attemptOnce() {
      return tokens.get().then(send, function (e) { throw CometError('token function failed: ' + e.message, 0); })
        .catch(function (err) {
          if (err.status === 401 && tokens.refreshable && !refreshed) {  // expired: a fresh token, at once
            refreshed = true;
            return tokens.refresh(err.token).then(attemptOnce);
          }
          // The Idempotency-Key makes a retry safe: the server stores the event once.
          if ((err.status === 0 || err.status === 503) && attempt < o.publishRetries) {
            var wait = reconnectDelay(attempt++, err.retryAfter, o);
            return new Promise(function (resolve) { setTimeout(resolve, wait); }).then(attemptOnce);
          }
          throw err;
        });
    }
    return attemptOnce();
  };

  // -- Subscription -----------------------------------------------------------

  function Subscription(client, channels, options) {
    this.options = merge(client.options, options);
    this._tokens = options.token !== undefined ? new TokenSource(options.token) : client.tokens;
    this.channels = channels;
    /** The opaque cursor: where this subscription stands in every channel. */
    this.cursor = typeof options.since === 'string' && options.since.indexOf('~') >= 0 ? options.since : null;
    this._since = this.cursor === null && options.since != null ? String(options.since) : null;
    /** The client id the server gave (its private channel is '@' + client). */
    this.client = options.client || null;
    /** False once the server said it could not give everything since the cursor. */
    this.recovered = true;
    /** 'connecting', 'open', 'reconnecting' or 'closed'. */
    this.state = null;
    this.attempt = 0;
    /** The last error that made this subscription retry (null after a good reply). */
    this.lastError = null;
    // Each cure of a refusal (a fresh token, a fresh client id) is tried once at once until
    // a good reply: a server that keeps refusing meets the backoff or stops us, never a loop.
    this._tokenRefreshed = false;
    this._clientDropped = false;
    this.closed = false;
    this._lastIds = {};
    this._handlers = options;
    this._connect();
  }

  Subscription.prototype.close = function () {
    if (this.closed) return;
    this.closed = true;
    this._stop();
    this._setState('closed', {reason: 'closed by the application'});
  };

  Subscription.prototype._stop = function () {
    clearTimeout(this._timer);
    clearTimeout(this._guard);
    if (this._abort) this._abort.abort();
    if (this._es) this._es.close();
    this._abort = this._es = null;
  };

  Subscription.prototype._setState = function (state, info) {
    if (state === this.state && state !== 'reconnecting') return;
    this.state = state;
    call(this._handlers.onState, this, [state, info || {}]);
  };

  Subscription.prototype._connect = function () {
    if (this.closed) return;
    if (this.state !== 'reconnecting') this._setState('connecting');
    if (this.options.transport === 'eventsource') this._openStream();
    else this._poll();
  };

  Subscription.prototype._resumeFrom = function () {
    return this.cursor || this._since;
  };

  Subscription.prototype._fail = function (status, body) {
    var err = CometError((body && body.error) || ('HTTP ' + status), status, body);
    this.closed = true;
    this._stop();
    this._setState('closed', {reason: err.message, status: status});
    call(this._handlers.onError, this, [err]);
  };

  // Every retry waits (growing, capped, jittered: reconnectDelay) and says why, so a
  // reply that keeps failing the same way can neither spin nor go unnoticed.
  Subscription.prototype._retry = function (retryAfter, reason, error) {
    if (this.closed) return;
    var self = this, delay = reconnectDelay(this.attempt, retryAfter, this.options);
    this.attempt++;
    this.lastError = error || CometError(reason, 0);
    this._setState('reconnecting', {reason: reason, error: this.lastError, delay: Math.round(delay),
                                    attempt: this.attempt});
    this._timer = setTimeout(function () { self._connect(); }, delay);
  };

  /** A reply or event that is not valid geventcomet JSON: keep the cursor, back off, report. */
  Subscription.prototype._badReply = function (status, text, what) {
    var reason = 'unusable ' + what + ' from the server (HTTP ' + status + '): ' + describeBody(text);
    var err = CometError(reason, status, null);
    err.unusable = true;
    this._retry(null, reason, err);
  };

  /** A good reply or stream: the next refusal may again be cured at once. */
  Subscription.prototype._healthy = function () {
    this.attempt = 0;
    this.lastError = null;
    this._tokenRefreshed = this._clientDropped = false;
  };

  /**
   * A 401 or 403 that a fresh token or a fresh client id can cure: start the cure and
   * return true; false means the refusal stands (the caller stops the subscription).
   */
  Subscription.prototype._cureRefusal = function (status, body, token) {
    var kind = body && body.auth, self = this;
    if (status === 401 && this._tokens.refreshable) {
      // Expired (or refused): ask the token function again; at once the first time.
      var again = this._tokenRefreshed, reason = (body && body.error) || 'HTTP 401';
      this._tokenRefreshed = true;
      this._tokens.refresh(token).then(function () {
        if (self.closed) return;
        if (again) self._retry(null, reason, CometError(reason, status, body));
        else self._connect();
      }, function (err) { self._retry(null, 'token function failed: ' + err.message); });
      return true;
    }
    if (status === 403 && kind === 'client' && !this._clientDropped) {
      // Our client id is not one the server signed (stored before the server checked
      // them): register afresh; whatever the old private channel held is gone.
      var old = this.client;
      this._clientDropped = true;
      this.client = null;
      this.cursor = withoutPrivate(this.cursor);
      if (old) delete this._lastIds['@' + old];
      this.recovered = false;
      call(this._handlers.onGap, this, [{recovered: false, channel: old ? '@' + old : null,
                                         reason: 'client id refused: registering afresh'}]);
      this._connect();
      return true;
    }
    return false;
  };

  Subscription.prototype._gap = function (info) {
    this.recovered = false;
    this._lastIds = {};  // the history restarted or was trimmed: ids may begin again
    call(this._handlers.onGap, this, [info]);
  };

  Subscription.prototype._deliver = function (event) {
    var last = this._lastIds[event.channel];
    if (last !== undefined && event.id <= last) return;  // already delivered (a resume overlap)
    this._lastIds[event.channel] = event.id;
    call(this._handlers.onEvent, this, [event]);
  };

  /** Run `then(token)` once the token is known; a token function that fails is retried. */
  Subscription.prototype._withToken = function (then) {
    var self = this;
    this._tokens.get().then(function (token) { if (!self.closed) then.call(self, token); }, function (err) {
      if (!self.closed) self._retry(null, 'token function failed: ' + (err && err.message));
    });
  };

  // Long-poll: GET /register in a loop, each request carrying the last reply's cursor.
  Subscription.prototype._poll = function () {
    this._withToken(this._pollWith);
  };

  Subscription.prototype._pollWith = function (token) {
    var self = this, o = this.options;
    var url = o.url + '/register?' + query({channel: this.channels, since: this._resumeFrom(),
                                              client: this.client, timeout: o.timeout});
    var ctrl = this._abort = new AbortController();
    // A proxy or a sleeping laptop can leave a request hanging forever: give up after the hold.
    this._guard = setTimeout(function () { ctrl.abort(); }, (o.timeout + 15) * 1000);
    fetch(url, {signal: ctrl.signal, credentials: o.credentials, cache: 'no-store',
                headers: token ? {Authorization: 'Bearer ' + token} : {}})
      .then(function (res) {
        return res.text().then(function (text) { return {res: res, text: text, body: parseJson(text)}; });
      })
      .then(function (got) {
        clearTimeout(self._guard);
        if (self.closed) return;
        var status = got.res.status, body = got.body;
        if (status === 200) {
          if (!isPollReply(body)) return self._badReply(status, got.text, 'reply');
          self._accept(body);
          if (self.closed) return;
          self._healthy();
          self._poll();
          return;
        }
        if (body && typeof body.cursor === 'string') self.cursor = body.cursor;  // a shutdown reply keeps our place
        if (body && typeof body.client === 'string') self.client = body.client;
        if ((status === 401 || status === 403) && self._cureRefusal(status, body, token)) return;
        if (FATAL[status]) return self._fail(status, body);
        var reason = (body && body.error) || ('HTTP ' + status);
        self._retry(retryAfterMs(got.res.headers.get('Retry-After')), reason, CometError(reason, status, body));
      }, function (err) {
        clearTimeout(self._guard);
        if (!self.closed) self._retry(null, 'network error: ' + err.message);
      });
  };

  Subscription.prototype._accept = function (reply) {
    this.client = reply.client;
    this.cursor = reply.cursor;
    this._since = null;
    this._setState('open', {client: reply.client});
    if (!reply.recovered) this._gap({recovered: false, epoch: reply.epoch, cursor: reply.cursor});
    for (var i = 0; i < reply.events.length && !this.closed; i++) this._deliver(reply.events[i]);
  };

  // EventSource: GET /stream. The browser itself reconnects once with Last-Event-ID
  // (after the server's randomised retry:); if that fails too, this code takes over
  // with backoff, resuming with ?last_event_id= from the last id it saw.
  // EventSource cannot set headers: the token goes in ?token= (keep it out of access logs).
  Subscription.prototype._openStream = function () {
    this._withToken(this._openStreamWith);
  };

  Subscription.prototype._openStreamWith = function (token) {
    var self = this, o = this.options;
    var url = o.url + '/stream?' + query({channel: this.channels, client: this.client,
                                            last_event_id: this._resumeFrom(), token: token || null});
    var es = this._es = new EventSource(url, {withCredentials: o.credentials === 'include'});
    var nativeRetryUsed = false;
    es.addEventListener('hello', function (e) {
      var hello = parseJson(e.data) || {};
      self.client = hello.client || self.client;
      if (e.lastEventId) self.cursor = e.lastEventId;
      self._since = null;
      // A stream that opens but then sends an unusable event is not healthy yet: the
      // backoff keeps growing until a good event arrives.
      if (!(self.lastError && self.lastError.unusable)) self._healthy();
      nativeRetryUsed = false;
      self._setState('open', {client: self.client});
    });
    es.addEventListener('gap', function (e) {
      var info = parseJson(e.data) || {};
      info.recovered = false;
      self._gap(info);
    });
    es.addEventListener('reconnect', function () {
      self._setState('reconnecting', {reason: 'server is restarting'});
    });
    es.onmessage = function (e) {
      var event = parseJson(e.data);
      if (!isEvent(event)) {  // skipping it would lose it: resume from before it, later
        es.close();
        self._es = null;
        return self._badReply(200, e.data, 'event');
      }
      if (e.lastEventId) self.cursor = e.lastEventId;
      self._healthy();
      self._deliver(event);
    };
    es.onerror = function () {
      if (self.closed || es !== self._es) return;
      var retrying = es.readyState === 0;  // CONNECTING: the browser is about to retry itself
      if (retrying && !nativeRetryUsed) {
        nativeRetryUsed = true;
        self._setState('reconnecting', {reason: 'connection lost'});
        return;
      }
      es.close();
      self._es = null;
      if (retrying) return self._retry(null, 'connection lost');
      self._probe(url, token);  // CLOSED: an HTTP error or a wrong content type; find out which
    };
  };

  // An EventSource that fails does not say why; ask the same URL with fetch for the status.
  Subscription.prototype._probe = function (url, token) {
    var self = this, ctrl = this._abort = new AbortController();
    fetch(url, {signal: ctrl.signal, credentials: this.options.credentials, cache: 'no-store'})
      .then(function (res) {
        var retryAfter = retryAfterMs(res.headers.get('Retry-After'));
        if (res.ok) { ctrl.abort(); return self._retry(null, 'stream failed'); }
        return res.text().then(function (text) {
          if (self.closed) return;
          var body = parseJson(text);
          if ((res.status === 401 || res.status === 403) && self._cureRefusal(res.status, body, token)) return;
          if (FATAL[res.status]) return self._fail(res.status, body);
          self._retry(retryAfter, 'HTTP ' + res.status);
        });
      }, function (err) {
        if (!self.closed) self._retry(null, 'network error: ' + err.message);
      });
  };

  return {
    Client: Client,
    Subscription: Subscription,
    /** Shorthand: new Client(options).subscribe(channels, options). */
    subscribe: function (channels, options) { return new Client(options).subscribe(channels, options); },
    backoffDelay: backoffDelay,
    retryAfterMs: retryAfterMs,
    reconnectDelay: reconnectDelay,
    withoutPrivate: withoutPrivate,
    TokenSource: TokenSource,
    DEFAULTS: DEFAULTS,
    version: '@GEVENTCOMET_VERSION@'  // geventcomet.__version__: the server puts it in as it serves this file
  };
});
