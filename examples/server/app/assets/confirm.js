// Settings → API Keys: the confirmation dialog: revoke, delete, and roll with an overlap.
//
// One of the page's scripts (core.js says how they fit together): it takes the shared helpers
// from `window.apiKeysPage` and calls the other scripts' functions through it.
'use strict';

(function () {
  const page = window.apiKeysPage;
  const { $, state, ApiError, api, describeError, show, announce, nowUnix } = page;

  // ---- the confirmation dialog ---------------------------------------------------------------

  function openDialog(mode, key, opener) {
    const dialog = $('confirm-dialog');
    state.dialog = { mode, key, opener };
    const title = $('confirm-title');
    const warning = $('confirm-warning');
    const ok = $('confirm-ok');
    const active = page.statusOf(key, nowUnix()).cls !== 'badge-expired' && key.status !== 'revoked';
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
    state.confirmBusy = busy;
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
    } else if (page.isManager()) {
      $('open-generate').focus();
    } else {
      $('main').focus();
    }
  }

  async function confirmDialog() {
    const d = state.dialog;
    if (!d || state.confirmBusy) return;
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
      await page.loadKeys();
    } catch (err) {
      setDialogBusy(false);
      setConfirmError(describeError(err));
      if (err instanceof ApiError && err.status === 404) await page.loadKeys();
    }
  }

  async function rollInstead() {
    const d = state.dialog;
    if (!d || state.confirmBusy) return;
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
      page.showNewKey(
        'Replacement for “' + d.key.name + '”',
        res,
        'the old key keeps working for ' + label + ', then expires',
      );
      announce('Replacement key generated; the old key expires in ' + label + '.');
      await page.loadKeys();
    } catch (err) {
      setDialogBusy(false);
      setConfirmError(describeError(err));
    }
  }

  Object.assign(page, { openDialog, closeDialog, onDialogClosed, confirmDialog, rollInstead });
})();
