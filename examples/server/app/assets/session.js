// Settings → API Keys: who is signed in: the demo sessions, switching them, a session that ends.
//
// One of the page's scripts (core.js says how they fit together): it takes the shared helpers
// from `window.apiKeysPage` and calls the other scripts' functions through it.
'use strict';

(function () {
  const page = window.apiKeysPage;
  const {
    LOGIN_PATH,
    LOGIN_HINT,
    $,
    state,
    api,
    describeError,
    el,
    show,
    announce,
    showError,
  } = page;

  const SESSIONS_KEY = 'api-keys-demo-sessions';

  function isManager() {
    return state.me !== null && state.me.role === 'manager';
  }

  // ---- identity ------------------------------------------------------------------------------

  function readSessions() {
    try {
      const v = JSON.parse(window.sessionStorage.getItem(SESSIONS_KEY) || '[]');
      return Array.isArray(v)
        ? v.filter((s) => s && typeof s.label === 'string' && typeof s.session === 'string')
        : [];
    } catch (_) {
      return [];
    }
  }

  function saveSessions(sessions) {
    try {
      window.sessionStorage.setItem(SESSIONS_KEY, JSON.stringify(sessions));
    } catch (_) {
      // Storage may be disabled: the sessions then last as long as the page.
    }
  }

  // The login link carries a one-time nonce in the URL fragment (never sent to a server); it
  // is traded for the demo sessions once, then removed from the address bar.
  async function loadSessions() {
    const m = /^#login=([0-9a-f]{32})$/.exec(window.location.hash);
    if (m) {
      window.history.replaceState(null, '', window.location.pathname + window.location.search);
      try {
        const sessions = await api('POST', LOGIN_PATH, { nonce: m[1] });
        saveSessions(Array.isArray(sessions) ? sessions : []);
      } catch (err) {
        showError('This login link did not work: ' + describeError(err));
      }
    }
    state.sessions = readSessions();
    await renderSessions(0);
  }

  async function renderSessions(selected) {
    const select = $('session');
    select.replaceChildren();
    state.sessions.forEach((s, i) => {
      select.append(el('option', { text: String(s.label), attrs: { value: i } }));
    });
    select.disabled = state.sessions.length === 0;
    if (state.sessions.length > 0) {
      const i = Math.min(selected, state.sessions.length - 1);
      select.value = String(i);
      await switchSession(i);
    } else {
      signedOut();
    }
  }

  function signedOut() {
    state.generation += 1;
    state.session = null;
    state.me = null;
    state.policy = null;
    state.keys = [];
    page.closeGenerate(false);
    page.dismissNewKey(false);
    if ($('confirm-dialog').open) page.closeDialog();
    page.closeLimits();
    renderRole();
    page.renderKeys('Not signed in.');
    showError('You are not signed in. ' + LOGIN_HINT);
  }

  // A 401 for the session in use: it expired, or the server restarted with a new signing key.
  // Its rows lose their buttons at once; the stored sessions are checked again and the dead
  // ones dropped; the list is reloaded with the first one still alive, if any.
  let rechecking = null;
  function sessionEnded(dead) {
    if (rechecking) return;
    state.generation += 1;
    state.keys = [];
    state.me = null;
    page.closeGenerate(false);
    if ($('confirm-dialog').open) page.closeDialog();
    page.closeLimits();
    renderRole();
    page.renderKeys('Your session has ended.');
    rechecking = (async () => {
      const alive = [];
      for (const s of state.sessions) {
        if (s.session === dead) continue;
        try {
          const res = await fetch('/api/whoami', {
            headers: { Accept: 'application/json', 'X-Demo-Session': s.session },
            credentials: 'omit',
            cache: 'no-store',
          });
          if (res.ok) alive.push(s);
        } catch (_) {
          // Unreachable server: drop nothing more on this evidence.
          alive.push(s);
        }
      }
      state.sessions = alive;
      saveSessions(alive);
      await renderSessions(0);
      if (alive.length > 0) announce('Your session had ended; signed in with the next one.');
    })().finally(() => {
      rechecking = null;
    });
  }

  async function switchSession(index) {
    const s = state.sessions[index];
    if (!s) return;
    state.session = String(s.session);
    state.generation += 1;
    const gen = state.generation;
    state.me = null;
    state.policy = null;
    page.closeGenerate(false);
    page.dismissNewKey(false);
    // A dialog opened as the identity before is not carried over to this one.
    if ($('confirm-dialog').open) page.closeDialog();
    page.closeLimits();
    showError('');
    try {
      const me = await api('GET', '/api/whoami');
      if (gen !== state.generation) return;
      state.me = me;
    } catch (err) {
      if (gen !== state.generation) return;
      showError(describeError(err));
      renderRole();
      return;
    }
    renderRole();
    if (isManager()) {
      try {
        const policy = await api('GET', '/api/policy');
        if (gen !== state.generation) return;
        state.policy = policy;
      } catch (err) {
        if (gen !== state.generation) return;
        showError('The key policy could not be loaded: ' + describeError(err));
      }
    }
    await page.loadKeys();
  }

  function renderRole() {
    const who = $('whoami');
    if (state.me) {
      who.textContent =
        'Organization ' + state.me.org + ' · signed in as ' + state.me.user + ' (' + state.me.role + ')';
    } else {
      who.textContent = '';
    }
    show($('manager-actions'), isManager());
    show($('member-notice'), state.me !== null && !isManager());
  }

  Object.assign(page, { isManager, loadSessions, sessionEnded, switchSession });
})();
