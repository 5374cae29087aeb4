// Settings → API Keys: the admin page of the api-keys example server.
//
// Plain JavaScript, no build step, no dependencies. Served with a strict Content-Security-Policy
// (script-src 'self', no inline script or style), so this file is the only script on the page.
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
  const EXPIRING_SOON_DAYS = 14;
  const LOGIN_PATH = '/demo/login';
  const SESSIONS_KEY = 'api-keys-demo-sessions';
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
    busy: false,
  };

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
    const res = await fetch(path, init);
    const text = res.status === 204 ? '' : await res.text();
    let data = null;
    if (text !== '') {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!res.ok) {
      if (res.status === 401 && sent !== null && sent === state.session) sessionEnded(sent);
      throw new ApiError(res.status, data);
    }
    return data;
  }

  function describeError(err) {
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

  // ---- small DOM helpers (text only) ---------------------------------------------------------

  function el(tag, opts, children) {
    const node = document.createElement(tag);
    if (opts) {
      if (opts.cls) node.className = opts.cls;
      if (opts.text !== undefined) node.textContent = opts.text;
      if (opts.attrs) {
        for (const [k, v] of Object.entries(opts.attrs)) node.setAttribute(k, String(v));
      }
    }
    if (children) for (const c of children) node.append(c);
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function announce(text) {
    const s = $('status');
    s.textContent = '';
    // A fresh text node makes screen readers announce a repeated message too.
    window.setTimeout(() => {
      s.textContent = text;
    }, 30);
  }

  function showError(text) {
    const e = $('error');
    e.textContent = text;
    show(e, text !== '');
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function isoDate(unix) {
    const d = new Date(unix * 1000);
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate());
  }

  function isoDateTime(unix) {
    const d = new Date(unix * 1000);
    return isoDate(unix) + ' ' + pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ' UTC';
  }

  // A <time> element: the date (with the time of day when `withTime`) as text, the exact
  // instant in `datetime` and the tooltip.
  function timeEl(unix, fallback, withTime) {
    if (unix === null || unix === undefined) return el('span', { cls: 'muted', text: fallback });
    return el('time', {
      text: withTime ? isoDateTime(unix) : isoDate(unix),
      attrs: {
        datetime: new Date(unix * 1000).toISOString(),
        title: isoDateTime(unix),
        'data-unix': unix,
      },
    });
  }

  function nowUnix() {
    return Math.floor(Date.now() / 1000);
  }

  // "45 minutes", "1 hour", "23 hours", "1 day", "14 days": minutes under an hour, hours
  // under a day (both rounded up, and a count that rounds up to the next unit says it in
  // that unit: 59 min 30 s is "1 hour", not "60 minutes"), then days (rounded to the nearest).
  function untilText(seconds) {
    const plural = (n, unit) => n + ' ' + unit + (n === 1 ? '' : 's');
    const minutes = Math.max(1, Math.ceil(seconds / 60));
    if (minutes < 60) return plural(minutes, 'minute');
    const hours = Math.ceil(seconds / 3600);
    if (hours < 24) return plural(hours, 'hour');
    return plural(Math.max(1, Math.round(seconds / DAY)), 'day');
  }

  function statusOf(key, now) {
    if (key.status === 'revoked') return { text: 'Revoked', cls: 'badge-revoked' };
    if (key.status === 'expired' || (key.expires_at !== null && key.expires_at <= now)) {
      return { text: 'Expired', cls: 'badge-expired' };
    }
    if (key.expires_at !== null) {
      const left = key.expires_at - now;
      if (left <= EXPIRING_SOON_DAYS * DAY) return { text: 'Expires in ' + untilText(left), cls: 'badge-expiring' };
    }
    return { text: 'Active', cls: 'badge-active' };
  }

  // Why a key stopped working, from its `revocation` ({kind, source}), for a person.
  function reasonText(key) {
    const r = key.revocation;
    if (!r || typeof r.kind !== 'string') return null;
    switch (r.kind) {
      case 'manual':
        return 'Revoked by a manager';
      case 'leaked':
        return typeof r.source === 'string' && r.source !== ''
          ? 'Leaked: found at ' + r.source
          : 'Leaked: reported as found in public';
      case 'unused':
        return 'Revoked: unused for too long';
      case 'departed_user':
        return 'Revoked: its creator left the organization';
      case 'rolled':
        return 'Replaced by a roll';
      default:
        return 'Revoked (' + r.kind + ')';
    }
  }

  // Whole days since the key's last use, or its creation if it was never used.
  function idleDays(key, now) {
    const since = key.last_used_at !== null && key.last_used_at !== undefined ? key.last_used_at : key.created_at;
    return Math.max(0, Math.floor((now - since) / DAY));
  }

  // The first (longest) expiry-warning window of the policy, in seconds; 0 when warnings are off.
  function warningWindow() {
    const p = state.policy;
    if (!p || !Array.isArray(p.warn_before_seconds)) return 0;
    return p.warn_before_seconds.reduce((m, s) => (typeof s === 'number' && s > m ? s : m), 0);
  }

  // Working keys (not a rolled key's old half, which is meant to expire) that expire within the
  // first warning window, soonest first.
  function expiringKeys(now) {
    const lead = warningWindow();
    if (lead <= 0) return [];
    return state.keys
      .filter(
        (k) =>
          k.status === 'active' &&
          !k.replaced_by &&
          k.expires_at !== null &&
          k.expires_at > now &&
          k.expires_at - now <= lead,
      )
      .sort((a, b) => a.expires_at - b.expires_at);
  }

  function renderExpiryBanner(now) {
    const banner = $('expiry-banner');
    const keys = expiringKeys(now);
    const list = $('expiry-banner-keys');
    list.replaceChildren();
    if (keys.length === 0) {
      show(banner, false);
      return;
    }
    $('expiry-banner-title').textContent =
      (keys.length === 1 ? '1 key expires' : keys.length + ' keys expire') +
      ' within ' + untilText(warningWindow()) +
      '. Roll ' + (keys.length === 1 ? 'it' : 'them') + ' before the integrations using ' +
      (keys.length === 1 ? 'it' : 'them') + ' stop working:';
    for (const k of keys) {
      list.append(
        el('li', { attrs: { 'data-key-id': k.id } }, [
          el('span', { text: '“' + k.name + '” (' }),
          el('code', { text: k.hint }),
          el('span', { text: ') expires in ' + untilText(k.expires_at - now) + ', on ' }),
          timeEl(k.expires_at, '', true),
        ]),
      );
    }
    show(banner, true);
  }

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
    closeGenerate(false);
    dismissNewKey(false);
    if ($('confirm-dialog').open) closeDialog();
    closeLimits();
    renderRole();
    renderKeys('Not signed in.');
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
    closeGenerate(false);
    if ($('confirm-dialog').open) closeDialog();
    closeLimits();
    renderRole();
    renderKeys('Your session has ended.');
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
    closeGenerate(false);
    dismissNewKey(false);
    // A dialog opened as the identity before is not carried over to this one.
    if ($('confirm-dialog').open) closeDialog();
    closeLimits();
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
    await loadKeys();
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

  // ---- the list ------------------------------------------------------------------------------

  async function loadKeys() {
    const gen = state.generation;
    try {
      const keys = await api('GET', '/api/keys');
      if (gen !== state.generation) return;
      state.keys = Array.isArray(keys) ? keys : [];
      state.credits = await loadCredits(state.keys, gen);
      if (gen !== state.generation) return;
      renderKeys(null);
    } catch (err) {
      if (gen !== state.generation) return;
      state.keys = [];
      if (err instanceof ApiError && err.status === 403) {
        renderKeys('The key list is shown to managers of this organization only.');
      } else {
        renderKeys('The keys could not be loaded.');
        showError(describeError(err));
      }
    }
  }

  // What is left of each budget, read without spending (one request per key with credits).
  async function loadCredits(keys, gen) {
    const left = {};
    await Promise.all(
      keys
        .filter((k) => k.credits && k.status !== 'revoked')
        .map(async (k) => {
          try {
            const c = await api('GET', '/api/keys/' + encodeURIComponent(k.id) + '/credits');
            if (gen === state.generation && c && typeof c.remaining === 'number') left[k.id] = c.remaining;
          } catch (_) {
            // Shown as unknown; the list itself loaded.
          }
        }),
    );
    return left;
  }

  const WINDOWS = { 1000: 'second', 60000: 'minute', 3600000: 'hour', 86400000: 'day' };

  function windowText(ms) {
    if (WINDOWS[ms]) return WINDOWS[ms];
    if (ms % 86400000 === 0) return ms / 86400000 + ' days';
    if (ms % 3600000 === 0) return ms / 3600000 + ' hours';
    if (ms % 60000 === 0) return ms / 60000 + ' minutes';
    if (ms % 1000 === 0) return ms / 1000 + ' seconds';
    return ms + ' ms';
  }

  function refillText(refill) {
    if (!refill) return '';
    if (refill.every === 'daily') return ', refilled to ' + refill.amount + ' daily';
    return ', refilled to ' + refill.amount + ' on day ' + refill.day + ' of each month';
  }

  function limitsCell(key) {
    const parts = [];
    for (const l of key.rate_limits || []) {
      parts.push(
        el('span', {
          cls: 'limit',
          text: l.limit + ' / ' + windowText(l.window_ms) + (l.scope === 'org' ? ' (organization)' : ''),
          attrs: { title: 'Rate limit “' + l.name + '”' },
        }),
      );
    }
    if (key.credits) {
      const left = state.credits[key.id];
      const text =
        (typeof left === 'number' ? left + ' of ' + key.credits.initial + ' credits left' : key.credits.initial + ' credits') +
        refillText(key.credits.refill);
      parts.push(el('span', { cls: 'credits', text }));
    }
    if (parts.length === 0) parts.push(el('span', { cls: 'muted', text: 'None' }));
    return parts;
  }

  function renderKeys(emptyText) {
    const rows = $('key-rows');
    const table = $('key-table');
    const empty = $('list-empty');
    const manager = isManager();
    rows.replaceChildren();
    table.classList.toggle('read-only', !manager);
    renderExpiryBanner(nowUnix());
    if (state.keys.length === 0) {
      empty.textContent =
        emptyText !== null
          ? emptyText
          : manager
            ? 'No API keys yet. Generate one for each integration.'
            : 'This organization has no API keys.';
      show(empty, true);
      show(table, false);
      return;
    }
    show(empty, false);
    show(table, true);
    const now = nowUnix();
    // Newest first; keys made in the same second by name, so the order is stable.
    const sorted = state.keys
      .slice()
      .sort((a, b) => b.created_at - a.created_at || String(a.name).localeCompare(String(b.name)));
    for (const key of sorted) rows.append(renderRow(key, now, manager));
  }

  function cell(label, children, cls) {
    return el('td', { cls, attrs: { 'data-label': label } }, [el('div', { cls: 'cell-value' }, children)]);
  }

  function renderRow(key, now, manager) {
    const st = statusOf(key, now);
    const tr = el('tr', { attrs: { 'data-key-id': key.id } });
    tr.classList.add('status-' + st.cls.replace('badge-', ''));

    tr.append(
      cell('Name', [el('span', { cls: 'key-name', text: key.name })].concat(lineage(key)), 'col-name'),
      cell('Key', [el('code', { cls: 'hint', text: key.hint })]),
      cell(
        'Scopes',
        key.scopes.map((s) => el('span', { cls: 'scope', text: s })),
      ),
      cell('Created', [
        timeEl(key.created_at, ''),
        el('span', { cls: 'muted by', text: ' by ' + key.created_by }),
      ]),
      cell('Expires', [timeEl(key.expires_at, 'Never', true)], 'col-expires'),
      cell('Last used', [timeEl(key.last_used_at, 'Never used')].concat(idleNote(key, st, now)), 'col-last-used'),
      cell('Limits', limitsCell(key), 'col-limits'),
      cell('Status', [el('span', { cls: 'badge ' + st.cls, text: st.text })].concat(reasonNote(key)), 'col-status'),
    );

    const actions = el('td', { cls: 'col-actions', attrs: { 'data-label': 'Actions' } });
    if (manager) {
      const revoked = key.status === 'revoked';
      const active = st.cls !== 'badge-revoked' && st.cls !== 'badge-expired';
      if (active && state.policy && state.policy.allow_reveal === true) {
        actions.append(rowButton('Reveal', 'action-reveal', key, () => reveal(key)));
      }
      if (active && !key.replaced_by) {
        actions.append(rowButton('Roll', 'action-roll', key, (ev) => openDialog('roll', key, ev.currentTarget)));
      }
      if (active) {
        actions.append(rowButton('Limits', 'action-limits', key, (ev) => openLimits(key, ev.currentTarget)));
      }
      if (!revoked) {
        actions.append(
          rowButton('Revoke', 'action-revoke', key, (ev) => openDialog('revoke', key, ev.currentTarget)),
          rowButton('Revoke and Delete', 'action-delete danger-outline', key, (ev) =>
            openDialog('delete', key, ev.currentTarget),
          ),
        );
      } else {
        actions.append(
          rowButton('Delete', 'action-delete danger-outline', key, (ev) =>
            openDialog('delete-revoked', key, ev.currentTarget),
          ),
        );
      }
    }
    tr.append(actions);
    return tr;
  }

  // "unused for N days" for a working key idle a day or more, and the sweep's warning when it
  // has announced the key's revocation as unused.
  function idleNote(key, st, now) {
    if (st.cls === 'badge-revoked' || st.cls === 'badge-expired') return [];
    const notes = [];
    const days = idleDays(key, now);
    if (days >= 1) {
      notes.push(el('span', { cls: 'idle', text: 'unused for ' + days + (days === 1 ? ' day' : ' days') }));
    }
    // The sweep's warning before revoking it as unused; a use after the warning cancels it.
    const n = key.notices;
    if (n && n.unused_warned === true) {
      const at = typeof n.unused_warned_at === 'number' ? n.unused_warned_at : null;
      const usedSince = at !== null && key.last_used_at !== null && key.last_used_at > at;
      if (!usedSince) {
        notes.push(
          el('span', {
            cls: 'unused-notice',
            text: 'Will be revoked as unused' + (at !== null ? ' (warned ' + isoDate(at) + ')' : ''),
          }),
        );
      }
    }
    return notes;
  }

  function reasonNote(key) {
    const text = reasonText(key);
    if (text === null) return [];
    const kind = String(key.revocation.kind).replace(/[^a-z_]/g, '');
    return [el('span', { cls: 'reason reason-' + kind, text })];
  }

  // After a roll both rows keep the name: say which key replaced which, by the other's hint.
  function lineage(key) {
    const other = (id) => {
      const k = state.keys.find((x) => x.id === id);
      return k ? String(k.hint) : 'a deleted key';
    };
    const lines = [];
    if (key.replaces) {
      lines.push(el('span', { cls: 'lineage lineage-replaces', text: 'Replaces ' + other(key.replaces) }));
    }
    if (key.replaced_by) {
      lines.push(el('span', { cls: 'lineage lineage-replaced-by', text: 'Replaced by ' + other(key.replaced_by) }));
    }
    return lines;
  }

  function rowButton(text, cls, key, onClick) {
    const b = el('button', {
      cls,
      text,
      attrs: { type: 'button', 'aria-label': text + ': ' + key.name },
    });
    b.addEventListener('click', onClick);
    return b;
  }

  // ---- generate ------------------------------------------------------------------------------

  function fillExpiry() {
    const select = $('key-expiry');
    select.replaceChildren();
    const p = state.policy;
    if (!p) return;
    const periods = Array.isArray(p.periods) ? p.periods : [];
    for (const days of periods) {
      const o = el('option', { text: days + ' days', attrs: { value: 'days:' + days } });
      if (days === p.default_days) {
        o.selected = true;
        o.textContent = days + ' days (recommended)';
      }
      select.append(o);
    }
    select.append(el('option', { text: 'Custom date…', attrs: { value: 'custom' } }));
    if (p.allow_never === true) {
      select.append(el('option', { text: 'Never', attrs: { value: 'never' } }));
    }
    // A custom date: from tomorrow up to the policy's maximum (the key expires at 00:00 UTC).
    const date = $('key-expiry-date');
    const today = Math.floor(nowUnix() / DAY) * DAY;
    date.min = isoDate(today + DAY);
    date.max = isoDate(nowUnix() + Number(p.max_days) * DAY);
    date.value = '';
    $('key-expiry-date-help').textContent =
      'Between ' + date.min + ' and ' + date.max + '. The key stops working at 00:00 UTC that day.';
    updateExpiryHelp();
  }

  // The chosen custom date as Unix seconds (00:00 UTC), or null when it is empty or out of range.
  function customExpiry() {
    const date = $('key-expiry-date');
    const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(date.value);
    if (!m) return null;
    const at = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])) / 1000;
    if (date.value < date.min || date.value > date.max) return null;
    return at;
  }

  function updateExpiryHelp() {
    const v = $('key-expiry').value;
    const help = $('key-expiry-help');
    if (v.startsWith('days:')) {
      const days = Number(v.slice(5));
      help.textContent =
        'The key will expire on ' + isoDate(nowUnix() + days * DAY) + ', ' + days + ' days from now.';
    } else if (v === 'never') {
      help.textContent = 'The key will never expire. Revoke it when it is no longer needed.';
    } else if (v === 'custom') {
      help.textContent = 'Choose the date below.';
    } else {
      help.textContent = '';
    }
    show($('key-expiry-date-field'), v === 'custom');
  }

  function openGenerate() {
    if (!isManager()) return;
    if (!state.policy) {
      showError('The key policy is not loaded; reload the page.');
      return;
    }
    dismissNewKey(false);
    $('generate-form').reset();
    fillExpiry();
    setGenerateError('');
    show($('generate-panel'), true);
    $('open-generate').setAttribute('aria-expanded', 'true');
    $('key-name').focus();
  }

  function closeGenerate(restoreFocus) {
    show($('generate-panel'), false);
    $('open-generate').setAttribute('aria-expanded', 'false');
    if (restoreFocus) $('open-generate').focus();
  }

  function setGenerateError(text) {
    const e = $('generate-error');
    e.textContent = text;
    show(e, text !== '');
  }

  async function submitGenerate(ev) {
    ev.preventDefault();
    if (state.busy) return;
    const name = $('key-name').value.trim();
    const scopes = Array.from(document.querySelectorAll('#generate-form input[name="scope"]:checked')).map(
      (i) => i.value,
    );
    if (name === '') {
      setGenerateError('Enter a name for the key.');
      $('key-name').focus();
      return;
    }
    if (scopes.length === 0) {
      setGenerateError('Choose at least one scope.');
      document.querySelector('#generate-form input[name="scope"]').focus();
      return;
    }
    const limits = readLimits('key-rate', 'key-rate-window', 'key-credits', 'key-credits-refill');
    if (limits.error) {
      setGenerateError(limits.error);
      $(limits.field).focus();
      return;
    }
    const v = $('key-expiry').value;
    const body = { name, scopes };
    if (limits.rate) body.rate_limits = [limits.rate];
    if (limits.credits) body.credits = limits.credits;
    if (v.startsWith('days:')) body.expiry = { days: Number(v.slice(5)) };
    else if (v === 'never') body.expiry = 'never';
    else if (v === 'custom') {
      const at = customExpiry();
      if (at === null) {
        setGenerateError('Choose an expiration date between ' + $('key-expiry-date').min + ' and ' +
          $('key-expiry-date').max + '.');
        $('key-expiry-date').focus();
        return;
      }
      body.expiry = { at };
    }
    setGenerateError('');
    const gen = state.generation;
    state.busy = true;
    $('generate-submit').disabled = true;
    $('generate-cancel').disabled = true;
    try {
      const res = await api('POST', '/api/keys', body);
      // Another identity was chosen meanwhile: its page does not get this key (a key already
      // shown is dismissed by the switch too).
      if (gen !== state.generation) return;
      closeGenerate(false);
      showNewKey('Your new API key', res, null);
      announce('API key “' + res.info.name + '” generated.');
      await loadKeys();
    } catch (err) {
      setGenerateError(describeError(err));
    } finally {
      state.busy = false;
      $('generate-submit').disabled = false;
      $('generate-cancel').disabled = false;
    }
  }

  // ---- usage limits --------------------------------------------------------------------------

  // The name this page gives a rate limit: after its window ("per-day").
  function limitName(windowMs) {
    return 'per-' + (WINDOWS[windowMs] || windowMs + 'ms');
  }

  // Reads a rate limit and a credit budget from a form: {rate, credits} (each null when its
  // field is empty), or {error, field}.
  function readLimits(rateId, windowId, creditsId, refillId, scopeId) {
    const whole = (id, min) => {
      // A number field whose text the browser cannot read as a number (`10e`, `-`) reports
      // its value as '' with `validity.badInput`: a typo, never "no limit".
      if ($(id).validity.badInput) return NaN;
      const raw = $(id).value.trim();
      if (raw === '') return null;
      const n = Number(raw);
      return /^[0-9]+$/.test(raw) && Number.isSafeInteger(n) && n >= min ? n : NaN;
    };
    const rate = whole(rateId, 1);
    if (Number.isNaN(rate)) return { error: 'A rate limit is a whole number of at least 1.', field: rateId };
    const credits = whole(creditsId, 0);
    if (Number.isNaN(credits)) return { error: 'Credits are a whole number of 0 or more.', field: creditsId };
    const out = { rate: null, credits: null };
    if (rate !== null) {
      const windowMs = Number($(windowId).value);
      const scope = scopeId && $(scopeId).value === 'org' ? 'org' : 'key';
      out.rate = { name: limitName(windowMs), limit: rate, window_ms: windowMs, scope };
    }
    if (credits !== null) {
      const every = $(refillId).value;
      let refill = null;
      if (every === 'daily') refill = { every: 'daily', amount: credits };
      else if (every === 'monthly') refill = { every: 'monthly', day: 1, amount: credits };
      out.credits = { initial: credits, refill };
    }
    return out;
  }

  function setLimitsError(text) {
    const e = $('limits-error');
    e.textContent = text;
    show(e, text !== '');
  }

  function openLimits(key, opener) {
    state.limitsKey = { key, opener };
    $('limits-title').textContent = 'Usage limits of “' + key.name + '”';
    const limits = key.rate_limits || [];
    const first = limits[0];
    $('limits-rate').value = first ? String(first.limit) : '';
    // A window set through the API that the list does not offer is offered too, as it is.
    const windows = $('limits-rate-window');
    for (const o of Array.from(windows.options)) if (!WINDOWS[o.value]) o.remove();
    if (first && !WINDOWS[first.window_ms]) {
      windows.append(el('option', { text: 'per ' + windowText(first.window_ms), attrs: { value: first.window_ms } }));
    }
    windows.value = first ? String(first.window_ms) : '60000';
    $('limits-rate-scope').value = first && first.scope === 'org' ? 'org' : 'key';
    const note = $('limits-note');
    note.textContent =
      limits.length > 1
        ? 'This key has ' + limits.length + ' rate limits, set through the API; the first is shown. ' +
          'Changing it replaces them all with the one above.'
        : '';
    show(note, note.textContent !== '');
    const c = key.credits;
    $('limits-credits').value = c ? String(c.initial) : '';
    $('limits-credits-refill').value = c && c.refill ? c.refill.every : 'none';
    const day = c && c.refill && c.refill.every === 'monthly' ? c.refill.day : 1;
    // A refill to another amount than the budget (set through the API) is shown with it: it
    // is kept when the budget changes.
    const to = (every) =>
      c && c.refill && c.refill.every === every && c.refill.amount !== c.initial ? ' to ' + c.refill.amount : '';
    $('limits-credits-refill').querySelector('option[value="daily"]').textContent = 'refilled' + to('daily') + ' daily';
    $('limits-credits-refill').querySelector('option[value="monthly"]').textContent =
      'refilled' + to('monthly') + (day === 1 ? ' on the 1st of each month' : ' on day ' + day + ' of each month');
    setLimitsError('');
    $('limits-dialog').showModal();
    $('limits-rate').focus();
  }

  // While a change is on its way the dialog stays open (Cancel is disabled, Escape is refused):
  // its outcome, an error above all, is shown in it.
  function setLimitsBusy(busy) {
    state.busy = busy;
    for (const id of ['limits-save', 'limits-cancel']) $(id).disabled = busy;
  }

  function closeLimits() {
    const dialog = $('limits-dialog');
    if (dialog.open) dialog.close();
  }

  function onLimitsClosed() {
    const d = state.limitsKey;
    state.limitsKey = null;
    if (d && d.opener && d.opener.isConnected) d.opener.focus();
  }

  async function saveLimits() {
    const d = state.limitsKey;
    if (!d || state.busy) return;
    const read = readLimits(
      'limits-rate',
      'limits-rate-window',
      'limits-credits',
      'limits-credits-refill',
      'limits-rate-scope',
    );
    if (read.error) {
      setLimitsError(read.error);
      $(read.field).focus();
      return;
    }
    const key = d.key;
    const path = '/api/keys/' + encodeURIComponent(key.id);
    // The dialog shows a limit's number, window and scope, not its name: the limit shown keeps
    // its name, which is what an organization-wide limit shares with the organization's other
    // keys (a window change must not move it to another counter). Only a per-key limit named
    // by this page after its window ("per-day") is renamed after its new one.
    const existing = key.rate_limits || [];
    if (read.rate && existing.length > 0) {
      const old = existing[0];
      const derived = old.scope !== 'org' && old.name === limitName(old.window_ms);
      if (!derived || old.window_ms === read.rate.window_ms) read.rate.name = old.name;
    }
    // Likewise a budget left as shown (the same credits and refill kind) keeps its refill's
    // day and amount, and is not written again: writing credits sets the balance back to full.
    const had = key.credits || null;
    const kind = (c) => (c && c.refill ? c.refill.every : 'none');
    if (read.credits && had && read.credits.initial === had.initial && kind(read.credits) === kind(had)) {
      read.credits = had;
    } else if (read.credits && kind(read.credits) !== 'none' && kind(read.credits) === kind(had)) {
      // A new amount, refilled as before: on the key's day of the month, and to the key's
      // refill amount when it is not the budget's, which the dialog shows but has no field for
      // (the API may have set another day than the 1st, another amount than the budget).
      if (kind(had) === 'monthly') read.credits.refill.day = had.refill.day;
      if (had.refill.amount !== had.initial) read.credits.refill.amount = had.refill.amount;
    }
    // Rate fields left as shown keep every limit as it is, those the dialog cannot show too.
    const first = existing[0];
    const asShown =
      read.rate && first
        ? read.rate.limit === first.limit && read.rate.window_ms === first.window_ms && read.rate.scope === first.scope
        : !read.rate && !first;
    const rateLimits = asShown ? existing : read.rate ? [read.rate] : [];
    const sameRate = JSON.stringify(
      (key.rate_limits || []).map((l) => [l.limit, l.window_ms, l.scope]),
    ) === JSON.stringify(rateLimits.map((l) => [l.limit, l.window_ms, l.scope]));
    const sameCredits = JSON.stringify(key.credits || null) === JSON.stringify(read.credits);
    setLimitsBusy(true);
    setLimitsError('');
    try {
      if (!sameRate) await api('PUT', path + '/limits', { rate_limits: rateLimits });
      if (!sameCredits) await api('PUT', path + '/credits', { credits: read.credits });
      closeLimits();
      announce('Usage limits of “' + key.name + '” saved.');
      await loadKeys();
    } catch (err) {
      setLimitsError(describeError(err));
    } finally {
      setLimitsBusy(false);
    }
  }

  // ---- the key shown once --------------------------------------------------------------------

  function showNewKey(title, res, extra) {
    $('new-key-title').textContent = title;
    const revealable = state.policy && state.policy.allow_reveal === true;
    $('new-key-warning').textContent = revealable
      ? 'Copy this key now and store it safely. A manager can reveal it again later, and every reveal is audited.'
      : 'Copy this key now and store it safely. It will not be shown again.';
    const token = $('new-key-token');
    token.value = res.key;
    $('copy-status').textContent = '';
    const info = res.info;
    const meta = $('new-key-meta');
    meta.replaceChildren();
    if (info) {
      const expires = timeEl(info.expires_at, 'never');
      expires.id = 'new-key-expires';
      meta.append(
        el('span', { text: 'Key ' }),
        el('code', { text: info.hint }),
        el('span', { text: ' (“' + info.name + '”) · expires ' }),
        expires,
      );
    }
    if (extra) meta.append(el('span', { text: ' · ' + extra }));
    show($('new-key-panel'), true);
    $('new-key-panel').focus();
  }

  function dismissNewKey(restoreFocus) {
    $('new-key-token').value = '';
    $('copy-status').textContent = '';
    $('new-key-meta').replaceChildren();
    show($('new-key-panel'), false);
    if (restoreFocus) {
      if (isManager()) $('open-generate').focus();
      else $('main').focus();
    }
  }

  async function copyKey() {
    const input = $('new-key-token');
    const status = $('copy-status');
    try {
      if (!navigator.clipboard || !window.isSecureContext) throw new Error('no clipboard');
      await navigator.clipboard.writeText(input.value);
      status.textContent = 'Copied to the clipboard.';
    } catch (_) {
      input.focus();
      input.select();
      status.textContent = 'Copying is not allowed here: the key is selected, press Ctrl+C (⌘C) to copy it.';
    }
  }

  async function reveal(key) {
    showError('');
    const gen = state.generation;
    try {
      const res = await api('POST', '/api/keys/' + encodeURIComponent(key.id) + '/reveal');
      if (gen !== state.generation) return; // another identity was chosen meanwhile
      showNewKey('API key revealed', { key: res.key, info: key }, 'this reveal was recorded in the audit log');
    } catch (err) {
      if (gen !== state.generation) return;
      showError(describeError(err));
    }
  }

  // ---- the confirmation dialog ---------------------------------------------------------------

  function openDialog(mode, key, opener) {
    const dialog = $('confirm-dialog');
    state.dialog = { mode, key, opener };
    const title = $('confirm-title');
    const warning = $('confirm-warning');
    const ok = $('confirm-ok');
    const active = statusOf(key, nowUnix()).cls !== 'badge-expired' && key.status !== 'revoked';
    if (mode === 'roll') {
      title.textContent = 'Roll “' + key.name + '”?';
      ok.textContent = 'Roll';
    } else if (mode === 'delete') {
      title.textContent = 'Revoke and delete “' + key.name + '”?';
      ok.textContent = 'Revoke and Delete';
    } else if (mode === 'revoke') {
      title.textContent = 'Revoke “' + key.name + '”?';
      ok.textContent = 'Revoke';
    } else {
      title.textContent = 'Delete “' + key.name + '”?';
      ok.textContent = 'Delete';
    }
    ok.classList.toggle('danger', mode !== 'roll');
    show($('roll-heading'), mode !== 'roll');
    show($('roll-instead'), mode !== 'roll');
    if (mode === 'roll') {
      warning.textContent =
        'A replacement key is generated now and shown once. This key keeps working for the time you choose, then expires.';
    } else if (mode === 'delete-revoked') {
      warning.textContent =
        'This key is already revoked and no longer works. Deleting removes it from the list; this cannot be undone.';
    } else {
      warning.textContent =
        'All integrations using this key will stop working immediately. ' +
        'If an integration still needs access, create the replacement key first.';
    }
    // A key is rolled once: the old half of a roll offers no second one.
    show($('roll-section'), mode !== 'delete-revoked' && active && !key.replaced_by);
    $('roll-overlap').value = '86400';
    setConfirmError('');
    setDialogBusy(false);
    dialog.showModal();
    $('confirm-cancel').focus();
  }

  function setConfirmError(text) {
    const e = $('confirm-error');
    e.textContent = text;
    show(e, text !== '');
  }

  function setDialogBusy(busy) {
    state.busy = busy;
    for (const id of ['confirm-ok', 'confirm-cancel', 'roll-instead', 'roll-overlap']) $(id).disabled = busy;
  }

  function closeDialog() {
    const dialog = $('confirm-dialog');
    if (dialog.open) dialog.close();
  }

  function onDialogClosed() {
    const d = state.dialog;
    state.dialog = null;
    if (d && d.opener && d.opener.isConnected) {
      d.opener.focus();
    } else if (!$('new-key-panel').hidden) {
      $('new-key-panel').focus();
    } else if (isManager()) {
      $('open-generate').focus();
    } else {
      $('main').focus();
    }
  }

  async function confirmDialog() {
    const d = state.dialog;
    if (!d || state.busy) return;
    if (d.mode === 'roll') {
      await rollInstead();
      return;
    }
    const path = '/api/keys/' + encodeURIComponent(d.key.id);
    setDialogBusy(true);
    setConfirmError('');
    try {
      if (d.mode === 'revoke') {
        await api('POST', path + '/revoke');
        announce('API key “' + d.key.name + '” revoked.');
      } else {
        await api('DELETE', path);
        announce('API key “' + d.key.name + '” deleted.');
        d.opener = null; // its row is gone
      }
      setDialogBusy(false);
      closeDialog();
      await loadKeys();
    } catch (err) {
      setDialogBusy(false);
      setConfirmError(describeError(err));
      if (err instanceof ApiError && err.status === 404) await loadKeys();
    }
  }

  async function rollInstead() {
    const d = state.dialog;
    if (!d || state.busy) return;
    const overlap = Number($('roll-overlap').value);
    const label = $('roll-overlap').selectedOptions[0].textContent;
    const gen = state.generation;
    setDialogBusy(true);
    setConfirmError('');
    try {
      const res = await api('POST', '/api/keys/' + encodeURIComponent(d.key.id) + '/roll', {
        overlap_seconds: overlap,
      });
      setDialogBusy(false);
      if (gen !== state.generation) return; // another identity was chosen meanwhile
      d.opener = null;
      closeDialog();
      showNewKey(
        'Replacement for “' + d.key.name + '”',
        res,
        'the old key keeps working for ' + label + ', then expires',
      );
      announce('Replacement key generated; the old key expires in ' + label + '.');
      await loadKeys();
    } catch (err) {
      setDialogBusy(false);
      setConfirmError(describeError(err));
    }
  }

  // ---- wiring --------------------------------------------------------------------------------

  // A dialog's `cancel` event can be refused only once per user activation: Chromium closes the
  // dialog on a second Escape whatever its handler does. Escape is therefore refused at its
  // keydown, before it becomes a close request, while a dialog's request is in flight.
  function refuseEscapeWhileBusy(ev) {
    const open = $('limits-dialog').open || $('confirm-dialog').open;
    if (ev.key === 'Escape' && state.busy && open) ev.preventDefault();
  }

  function init() {
    $('session').addEventListener('change', (ev) => {
      switchSession(Number(ev.currentTarget.value));
    });
    $('open-generate').addEventListener('click', openGenerate);
    // While a key is being generated the form stays open: its error, if any, is shown in it.
    $('generate-cancel').addEventListener('click', () => {
      if (!state.busy) closeGenerate(true);
    });
    $('generate-form').addEventListener('submit', submitGenerate);
    $('generate-form').addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        ev.preventDefault();
        if (!state.busy) closeGenerate(true);
      }
    });
    $('key-expiry').addEventListener('change', updateExpiryHelp);
    $('copy-key').addEventListener('click', copyKey);
    $('new-key-done').addEventListener('click', () => dismissNewKey(true));
    $('confirm-cancel').addEventListener('click', closeDialog);
    $('confirm-ok').addEventListener('click', confirmDialog);
    $('roll-instead').addEventListener('click', rollInstead);
    $('limits-cancel').addEventListener('click', closeLimits);
    $('limits-save').addEventListener('click', saveLimits);
    $('limits-dialog').addEventListener('close', onLimitsClosed);
    $('limits-dialog').addEventListener('cancel', (ev) => {
      // Escape closes the dialog, except while a request is in flight.
      if (state.busy) ev.preventDefault();
    });
    $('limits-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      saveLimits();
    });
    const dialog = $('confirm-dialog');
    dialog.addEventListener('cancel', (ev) => {
      // Escape closes the dialog, except while a request is in flight.
      if (state.busy) ev.preventDefault();
    });
    // Wherever the focus is (the button just pressed is disabled meanwhile).
    document.addEventListener('keydown', refuseEscapeWhileBusy, true);
    dialog.addEventListener('close', onDialogClosed);
    loadSessions();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
