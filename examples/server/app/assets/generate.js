// Settings → API Keys: the generate form: name, scopes, expiry and limits of a new key.
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
    api,
    describeError,
    el,
    show,
    announce,
    showError,
    isoDate,
    nowUnix,
  } = page;

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
    if (!page.isManager()) return;
    if (!state.policy) {
      showError('The key policy is not loaded; reload the page.');
      return;
    }
    page.dismissNewKey(false);
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
    if (state.generating) return;
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
    const limits = page.readLimits('key-rate', 'key-rate-window', 'key-credits', 'key-credits-refill');
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
    state.generating = true;
    $('generate-submit').disabled = true;
    $('generate-cancel').disabled = true;
    try {
      const res = await api('POST', '/api/keys', body);
      // Another identity was chosen meanwhile: its page does not get this key (a key already
      // shown is dismissed by the switch too).
      if (gen !== state.generation) return;
      closeGenerate(false);
      page.showNewKey('Your new API key', res, null);
      announce('API key “' + res.info.name + '” generated.');
      await page.loadKeys();
    } catch (err) {
      setGenerateError(describeError(err));
    } finally {
      state.generating = false;
      $('generate-submit').disabled = false;
      $('generate-cancel').disabled = false;
    }
  }

  Object.assign(page, { updateExpiryHelp, openGenerate, closeGenerate, submitGenerate });
})();
