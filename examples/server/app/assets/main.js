// Settings → API Keys: the wiring: every control's handler, then the start.
//
// One of the page's scripts (core.js says how they fit together): it takes the shared helpers
// from `window.apiKeysPage` and calls the other scripts' functions through it.
'use strict';

(function () {
  const page = window.apiKeysPage;
  const { $, state } = page;

  // ---- wiring --------------------------------------------------------------------------------

  // A dialog's `cancel` event can be refused only once per user activation: Chromium closes the
  // dialog on a second Escape whatever its handler does. Escape is therefore refused at its
  // keydown, before it becomes a close request, while a dialog's request is in flight.
  function refuseEscapeWhileBusy(ev) {
    const busy =
      ($('limits-dialog').open && state.limitsBusy) || ($('confirm-dialog').open && state.confirmBusy);
    if (ev.key === 'Escape' && busy) ev.preventDefault();
  }

  function init() {
    $('session').addEventListener('change', (ev) => {
      page.switchSession(Number(ev.currentTarget.value));
    });
    $('open-generate').addEventListener('click', page.openGenerate);
    // While a key is being generated the form stays open: its error, if any, is shown in it.
    $('generate-cancel').addEventListener('click', () => {
      if (!state.generating) page.closeGenerate(true);
    });
    $('generate-form').addEventListener('submit', page.submitGenerate);
    $('generate-form').addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        ev.preventDefault();
        if (!state.generating) page.closeGenerate(true);
      }
    });
    $('key-expiry').addEventListener('change', page.updateExpiryHelp);
    $('copy-key').addEventListener('click', page.copyKey);
    $('new-key-done').addEventListener('click', () => page.dismissNewKey(true));
    $('confirm-cancel').addEventListener('click', page.closeDialog);
    $('confirm-ok').addEventListener('click', page.confirmDialog);
    $('roll-instead').addEventListener('click', page.rollInstead);
    $('limits-cancel').addEventListener('click', page.closeLimits);
    $('limits-save').addEventListener('click', page.saveLimits);
    $('limits-dialog').addEventListener('close', page.onLimitsClosed);
    $('limits-dialog').addEventListener('cancel', (ev) => {
      // Escape closes the dialog, except while its request is in flight.
      if (state.limitsBusy) ev.preventDefault();
    });
    $('limits-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      page.saveLimits();
    });
    const dialog = $('confirm-dialog');
    dialog.addEventListener('cancel', (ev) => {
      // Escape closes the dialog, except while its request is in flight.
      if (state.confirmBusy) ev.preventDefault();
    });
    // Wherever the focus is (the button just pressed is disabled meanwhile).
    document.addEventListener('keydown', refuseEscapeWhileBusy, true);
    dialog.addEventListener('close', page.onDialogClosed);
    page.loadSessions();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
