// Reflow console: the admin's live activity stream. Rows are built with textContent only, so
// names and arguments from audit rows can never become markup.
'use strict';

(function () {
  const live = document.getElementById('live');
  if (!live || !window.EventSource) return;
  const state = document.getElementById('live-state');
  const body = live.querySelector('tbody');
  const MAX_ROWS = 200;

  function pad(n) { return String(n).padStart(2, '0'); }
  function timeText(ms) {
    const d = new Date(Number(ms));
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) + ' ' +
      pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds());
  }
  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text == null ? '-' : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  const source = new EventSource(live.dataset.src);
  source.addEventListener('open', function () { state.textContent = 'live'; });
  source.addEventListener('error', function () { state.textContent = 'reconnecting…'; });
  source.addEventListener('lagged', function (ev) {
    state.textContent = 'live (skipped ' + Number(ev.data) + ' events)';
  });
  source.addEventListener('audit', function (ev) {
    let e;
    try { e = JSON.parse(ev.data); } catch (_) { return; }
    const empty = body.querySelector('td.muted');
    if (empty) empty.parentNode.remove();
    const tr = document.createElement('tr');
    tr.className = 'fresh';
    cell(tr, timeText(e.time_ms));
    cell(tr, e.user);
    cell(tr, e.method);
    cell(tr, e.target);
    cell(tr, e.name, 'name');
    cell(tr, e.decision, 'd-' + (e.decision || '-'));
    cell(tr, e.policy);
    cell(tr, e.outcome);
    cell(tr, Number(e.duration_ms).toFixed(1));
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
  });
})();
