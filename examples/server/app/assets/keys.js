// Settings → API Keys: the key list: loading it, its rows and their buttons, the expiry banner.
//
// One of the page's scripts (core.js says how they fit together): it takes the shared helpers
// from `window.apiKeysPage` and calls the other scripts' functions through it.
'use strict';

(function () {
  const page = window.apiKeysPage;
  const {
    DAY,
    $,
    state,
    ApiError,
    api,
    describeError,
    el,
    show,
    showError,
    isoDate,
    timeEl,
    nowUnix,
    untilText,
    windowText,
  } = page;

  const EXPIRING_SOON_DAYS = 14;

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
    const manager = page.isManager();
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
        actions.append(rowButton('Reveal', 'action-reveal', key, () => page.reveal(key)));
      }
      if (active && !key.replaced_by) {
        actions.append(rowButton('Roll', 'action-roll', key, (ev) => page.openDialog('roll', key, ev.currentTarget)));
      }
      if (active) {
        actions.append(rowButton('Limits', 'action-limits', key, (ev) => page.openLimits(key, ev.currentTarget)));
      }
      if (!revoked) {
        actions.append(
          rowButton('Revoke', 'action-revoke', key, (ev) => page.openDialog('revoke', key, ev.currentTarget)),
          rowButton('Revoke and Delete', 'action-delete danger-outline', key, (ev) =>
            page.openDialog('delete', key, ev.currentTarget),
          ),
        );
      } else {
        actions.append(
          rowButton('Delete', 'action-delete danger-outline', key, (ev) =>
            page.openDialog('delete-revoked', key, ev.currentTarget),
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

  Object.assign(page, { statusOf, loadKeys, renderKeys });
})();
