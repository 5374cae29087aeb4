// Settings → API Keys: the usage limits: reading them from a form, and the Limits dialog.
//
// One of the page's scripts (core.js says how they fit together): it takes the shared helpers
// from `window.apiKeysPage` and calls the other scripts' functions through it.
'use strict';

(function () {
  const page = window.apiKeysPage;
  const { $, state, api, describeError, el, show, announce, WINDOWS, windowText } = page;

  // ---- usage limits --------------------------------------------------------------------------

  // The largest limit, balance or refill amount the server takes (`api_keys::MAX_UNITS`, 2^53).
  const MAX_UNITS_TEXT = '9007199254740992';

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
      // Up to the server's largest, 2^53 (`MAX_UNITS`): a number, exact in JavaScript too.
      // Compared as digits, since one more than that reads as 2^53 once made a Number.
      if (!/^[0-9]+$/.test(raw)) return NaN;
      const digits = raw.replace(/^0+(?=.)/, '');
      const fits = digits.length < MAX_UNITS_TEXT.length ||
        (digits.length === MAX_UNITS_TEXT.length && digits <= MAX_UNITS_TEXT);
      const n = Number(digits);
      return fits && n >= min ? n : NaN;
    };
    const rate = whole(rateId, 1);
    if (Number.isNaN(rate)) {
      return { error: 'A rate limit is a whole number from 1 to ' + MAX_UNITS_TEXT + '.', field: rateId };
    }
    const credits = whole(creditsId, 0);
    if (Number.isNaN(credits)) {
      return { error: 'Credits are a whole number from 0 to ' + MAX_UNITS_TEXT + '.', field: creditsId };
    }
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
    state.limitsBusy = busy;
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
    if (!d || state.limitsBusy) return;
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
      await page.loadKeys();
      // The list was drawn again, the button that opened the dialog with it: its successor
      // takes the focus back, unless the person has moved it meanwhile.
      if (document.activeElement === null || document.activeElement === document.body) {
        const again = document.querySelector('tr[data-key-id="' + CSS.escape(key.id) + '"] .action-limits');
        if (again) again.focus();
        else if (page.isManager()) $('open-generate').focus();
      }
    } catch (err) {
      setLimitsError(describeError(err));
    } finally {
      setLimitsBusy(false);
    }
  }

  Object.assign(page, { readLimits, openLimits, closeLimits, onLimitsClosed, saveLimits });
})();
