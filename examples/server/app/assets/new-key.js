// Settings → API Keys: the key shown once: a new, rolled or revealed key, and copying it.
//
// One of the page's scripts (core.js says how they fit together): it takes the shared helpers
// from `window.apiKeysPage` and calls the other scripts' functions through it.
'use strict';

(function () {
  const page = window.apiKeysPage;
  const { $, state, api, describeError, el, show, showError, timeEl } = page;

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
      if (page.isManager()) $('open-generate').focus();
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

  Object.assign(page, { showNewKey, dismissNewKey, copyKey, reveal });
})();
