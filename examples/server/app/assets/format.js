// Settings → API Keys: DOM helpers (text only) and the date, duration and window texts.
//
// One of the page's scripts (core.js says how they fit together): it takes the shared helpers
// from `window.apiKeysPage` and calls the other scripts' functions through it.
'use strict';

(function () {
  const page = window.apiKeysPage;
  const { DAY, $ } = page;

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
  const WINDOWS = { 1000: 'second', 60000: 'minute', 3600000: 'hour', 86400000: 'day' };

  function windowText(ms) {
    if (WINDOWS[ms]) return WINDOWS[ms];
    if (ms % 86400000 === 0) return ms / 86400000 + ' days';
    if (ms % 3600000 === 0) return ms / 3600000 + ' hours';
    if (ms % 60000 === 0) return ms / 60000 + ' minutes';
    if (ms % 1000 === 0) return ms / 1000 + ' seconds';
    return ms + ' ms';
  }

  Object.assign(page, {
    el,
    show,
    announce,
    showError,
    isoDate,
    timeEl,
    nowUnix,
    untilText,
    WINDOWS,
    windowText,
  });
})();
