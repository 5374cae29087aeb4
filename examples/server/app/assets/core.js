// Settings → API Keys: the namespace, the page's state, the JSON API client and its error texts.
//
// Plain JavaScript, no build step, no dependencies. Served with a strict Content-Security-Policy
// (script-src 'self', no inline script or style): the page loads this server's own scripts, in
// order, each with `defer`: core.js, format.js, session.js, keys.js, limits.js, new-key.js,
// generate.js, confirm.js, then main.js, which wires the controls and starts. They share one
// object, `window.apiKeysPage`, made here: each script adds what the others call.
//
// Rules kept throughout:
// - every value that comes from the server or the user goes into the DOM with `textContent` or
//   `setAttribute` (never `innerHTML`), so a key named `<img src=x onerror=…>` is shown as text;
// - the demo session travels in the `X-Demo-Session` header of `fetch` calls (no cookies, so
//   there is no CSRF surface); a real host uses its own session instead;
// - a new or revealed key is only ever put into one read-only input, cleared when dismissed; it
//   is never written to a URL, localStorage, sessionStorage or the console.
'use strict';

(function () {
  const page = (window.apiKeysPage = {});

  const LOGIN_PATH = '/demo/login';
  const LOGIN_HINT =
    'Open the login link the server printed at start (sessions expire, and a restarted server forgets them).';
  const DAY = 86400;

  const $ = (id) => document.getElementById(id);

  const state = {
    sessions: [], // [{label, session}] from POST /demo/login, kept in sessionStorage
    session: null, // the chosen demo session (header value)
    me: null, // {org, user, role} from GET /api/whoami
    policy: null, // GET /api/policy
    keys: [],
    credits: {}, // key id -> credits left now (GET /api/keys/{id}/credits), for keys with a budget
    limitsKey: null, // the key whose limits dialog is open
    generation: 0, // bumps on every identity switch; stale responses are dropped
    dialog: null, // {mode, key, opener}
    // A request of one of these is on its way (each is held up by its own request only).
    generating: false,
    limitsBusy: false,
    confirmBusy: false,
  };

  // A request the server or the network leaves unanswered is given up after this long (ms):
  // a dialog refuses Cancel and Escape while its request is on its way, so an answer that
  // never comes must not hold it open for good. A property, so that a test can shorten it.
  page.requestTimeoutMs = 30000;

  // No answer in time: the request may or may not have been carried out.
  class TimeoutError extends Error {}

  class ApiError extends Error {
    constructor(status, body) {
      super('HTTP ' + status);
      this.status = status;
      this.body = body;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const sent = path === LOGIN_PATH ? null : state.session;
    if (sent !== null) headers['X-Demo-Session'] = sent;
    const init = {
      method,
      headers,
      credentials: 'omit',
      cache: 'no-store',
      referrerPolicy: 'no-referrer',
    };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const controller = new AbortController();
    init.signal = controller.signal;
    const timer = setTimeout(() => controller.abort(), page.requestTimeoutMs);
    let res;
    let text;
    try {
      res = await fetch(path, init);
      text = res.status === 204 ? '' : await res.text();
    } catch (err) {
      if (controller.signal.aborted) throw new TimeoutError('no answer in time');
      throw err;
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    if (text !== '') {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!res.ok) {
      if (res.status === 401 && sent !== null && sent === state.session) page.sessionEnded(sent);
      throw new ApiError(res.status, data);
    }
    return data;
  }

  function describeError(err) {
    if (err instanceof TimeoutError) {
      return 'The server did not answer in time. A change may or may not have been made: ' +
        'reload the page to see where things stand.';
    }
    if (!(err instanceof ApiError)) return 'The server could not be reached. Try again.';
    const cls = err.body && typeof err.body.error === 'string' ? err.body.error : '';
    const msg = err.body && typeof err.body.detail === 'string' ? err.body.detail : '';
    switch (cls) {
      case 'permission_denied':
        return 'Only managers of this organization can manage API keys.';
      case 'unauthenticated':
        return 'Your session has ended. ' + LOGIN_HINT;
      case 'not_found':
        return 'This key no longer exists. The list has been refreshed.';
      case 'policy':
        return msg !== '' ? msg : 'The request is not allowed by the key policy.';
      case 'conflict':
        return 'The key was changed at the same time by someone else. Try again.';
      default:
        return msg !== '' ? msg : 'Something went wrong (HTTP ' + err.status + '). Try again.';
    }
  }

  Object.assign(page, { LOGIN_PATH, LOGIN_HINT, DAY, $, state, ApiError, api, describeError });
})();
