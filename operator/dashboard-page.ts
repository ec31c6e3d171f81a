/**
 * The dashboard page: one self-contained HTML document (no framework, no CDN,
 * works offline). It takes the full snapshot and then the changes from
 * `GET /events` (Server-Sent Events) and redraws; nothing polls. Every value
 * from a device goes in through textContent, never as markup. The script and
 * style carry the response's CSP nonce.
 */

const CSS = `
:root{--bg:#fff;--fg:#1d2330;--mute:#6b7280;--line:#e5e7eb;--ok:#15803d;--busy:#0369a1;--warn:#b45309;--bad:#b91c1c;--badbg:#fef2f2;--chip:#f3f4f6}
@media (prefers-color-scheme:dark){:root{--bg:#111418;--fg:#e5e7eb;--mute:#9ca3af;--line:#2a2f37;--ok:#4ade80;--busy:#38bdf8;--warn:#fbbf24;--bad:#f87171;--badbg:#2a1215;--chip:#1f242c}}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;background:var(--bg);color:var(--fg)}
header{display:flex;gap:16px;align-items:center;padding:10px 16px;border-bottom:1px solid var(--line);flex-wrap:wrap}
h1{font-size:18px;margin:0}h2{font-size:15px;margin:18px 0 6px}
main{padding:0 16px 24px}
#conn{font-size:12px;padding:2px 8px;border-radius:10px;background:var(--chip)}#conn.live{color:var(--ok)}#conn.down{color:var(--bad)}
.chips{display:flex;gap:6px;flex-wrap:wrap}.chip{background:var(--chip);border-radius:10px;padding:2px 9px;font-size:12px}
label{font-size:13px;color:var(--mute)}select,input{font:inherit;padding:2px 4px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--mute);font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.st{font-weight:600}.st-ok,.st-completed{color:var(--ok)}.st-downloading,.st-verifying,.st-applying,.st-testing,.st-waiting,.st-soaking,.st-publishing{color:var(--busy)}
.st-failed,.st-paused,.st-aborted{color:var(--warn)}.st-rolled_back,.st-rejected,.st-halted,.st-rolling_back{color:var(--bad)}
tr.attention{background:var(--badbg)}tr.attention .why{color:var(--bad);font-weight:600}
tr.offline td{opacity:.5}tr.offline td.seen{opacity:1;color:var(--warn);font-weight:600}
.tag{font-size:11px;border:1px solid currentColor;border-radius:4px;padding:0 4px;margin-left:4px}
.msg{display:block;font-size:12px;color:var(--fg);font-weight:400}
#alerts .card{border-left:4px solid var(--bad);background:var(--badbg);padding:6px 10px;margin:6px 0}
#alerts .card.silent{border-color:var(--warn)}
progress{width:90px;vertical-align:middle}.empty{color:var(--mute);padding:8px}
tr.waves>td{padding:0 8px 8px 24px;border-bottom:1px solid var(--line)}.wavetable td{border:0;padding:2px 8px;font-size:12px}
.wavetable tr.current td{font-weight:600}.mute{color:var(--mute)}tr.total td{font-weight:600;border-top:2px solid var(--line)}.note{font-size:12px;color:var(--mute);margin:0 0 4px}
.login{border:1px solid var(--line);border-radius:6px;padding:8px 12px;margin:10px 0}.login .why{color:var(--bad)}#problem{border-left:4px solid var(--bad);background:var(--badbg);padding:6px 10px}
`;

const JS = `
'use strict';
const devices = new Map(), rollouts = new Map();
let skew = 0, pending = false;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const serverNow = () => Date.now() - skew;
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; }
function ago(t) {
  if (t === null || t === undefined) return 'never';
  const s = Math.max(0, Math.round((serverNow() - t) / 1000));
  return s < 120 ? s + ' s ago' : s < 7200 ? Math.floor(s / 60) + ' min ago' : s < 172800 ? Math.floor(s / 3600) + ' h ago' : Math.floor(s / 86400) + ' d ago';
}
const short = (d) => d ? d.slice(0, 12) : '-';
function stateCell(state, tags) {
  const td = el('td'); td.appendChild(el('span', state || 'unknown', 'st st-' + (state || 'unknown')));
  for (const t of tags) td.appendChild(el('span', t, 'tag'));
  return td;
}
function schedule() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); } }
function groupsSeen() { return [...new Set([...devices.values()].map((d) => d.group).filter(Boolean))].sort(); }
function renderFilter() {
  const sel = $('group'), want = params.get('group') || '';
  const opts = ['', ...groupsSeen()];
  if (want && !opts.includes(want)) opts.push(want);
  if (sel.options.length !== opts.length || [...sel.options].some((o, i) => o.value !== opts[i])) {
    sel.replaceChildren(...opts.map((g) => { const o = el('option', g || 'all groups'); o.value = g; return o; }));
  }
  sel.value = want;
}
function visibleDevices() {
  const g = params.get('group') || '', q = ($('search').value || '').toLowerCase(), only = $('only').checked;
  return [...devices.values()].filter((d) => (!g || d.group === g) && (!q || d.device.toLowerCase().includes(q)) && (!only || d.attention || d.silent || d.online === false))
    .sort((a, b) => (Number(b.attention) - Number(a.attention)) || a.device.localeCompare(b.device));
}
function render() {
  renderFilter();
  const g = params.get('group') || '';
  const ds = visibleDevices();
  const all = [...devices.values()].filter((d) => !g || d.group === g);
  const counts = {};
  for (const d of all) counts[d.state || 'unknown'] = (counts[d.state || 'unknown'] || 0) + 1;
  const chips = [el('span', all.length + ' devices', 'chip'), el('span', all.filter((d) => d.online === true).length + ' online', 'chip'), el('span', all.filter((d) => d.online === false).length + ' offline', 'chip' + (all.some((d) => d.online === false) ? ' st-failed' : ''))];
  for (const s of Object.keys(counts).sort()) chips.push(el('span', s + ' ' + counts[s], 'chip st st-' + s));
  $('counts').replaceChildren(...chips);
  // Needs attention: rolled back, rejected, failed, silent.
  const cards = [];
  for (const d of all.filter((d) => d.attention || d.silent || (d.rollback && d.state !== 'ok'))) {
    const c = el('div', null, 'card' + (d.attention ? '' : ' silent'));
    const head = el('strong', d.device + (d.group ? ' [' + d.group + ']' : '') + ': ' + (d.silent && !d.attention ? 'SILENT while ' + d.state : String(d.state).replace('_', ' ').toUpperCase()) + (d.rollback ? ' (rollback)' : ''));
    c.appendChild(head);
    if (d.reason) c.appendChild(el('span', ' - ' + d.reason));
    if (d.message) c.appendChild(el('span', d.message, 'msg'));
    c.appendChild(el('span', (d.online === false ? 'offline, ' : '') + 'last seen ' + ago(d.lastSeen), 'msg'));
    cards.push(c);
  }
  $('alerts').replaceChildren(...cards);
  // Rollouts.
  const rs = [...rollouts.values()].filter((r) => !g || r.waveList.some((w) => w.group === g))
    .sort((a, b) => (Number(a.terminal) - Number(b.terminal)) || String(b.updated).localeCompare(String(a.updated)));
  const rb = $('rollouts');
  rb.replaceChildren(...rs.flatMap((r) => {
    const tr = el('tr'); if (r.state === 'halted' || r.state === 'rolling_back') tr.className = 'attention';
    const c = r.counts;
    tr.appendChild(el('td', r.rollout));
    tr.appendChild(stateCell(r.state, []));
    tr.appendChild(el('td', r.wave + '/' + r.waves + (r.group ? ' ' + r.group : '')));
    for (const k of ['ok', 'failed', 'pending', 'offline']) tr.appendChild(el('td', c ? c[k] : '-', 'num'));
    const p = el('td'); if (c && c.total) { const pr = el('progress'); pr.max = c.total; pr.value = c.ok; p.appendChild(pr); p.appendChild(el('span', ' ' + c.ok + '/' + c.total)); } tr.appendChild(p);
    const why = el('td', null, 'why');
    const w = r.waveList[r.wave - 1];
    if (r.reason) why.appendChild(el('span', r.reason));
    if (w && w.started && !r.terminal) {
      const wait = w.devices.map((id) => devices.get(id)).filter((d) => d && !d.attention && !(d.state === 'ok' && d.running === r.target && r.target));
      if (w.blocking.length) why.appendChild(el('span', 'blocked by offline: ' + w.blocking.join(', '), 'msg'));
      if (wait.length) why.appendChild(el('span', 'waits on: ' + wait.slice(0, 8).map((d) => d.device + ' (' + (d.online === false ? 'offline, ' : d.silent ? 'silent, ' : '') + (d.state || 'unknown') + ', ' + ago(d.lastSeen) + ')').join(', ') + (wait.length > 8 ? ', ...' : ''), 'msg'));
    }
    for (const f of r.waveList.flatMap((w) => w.failures)) why.appendChild(el('span', f.device + ' ' + f.state + (f.reason ? ': ' + f.reason : ''), 'msg'));
    tr.appendChild(why);
    tr.appendChild(el('td', r.lastEvent ? r.lastEvent.type + (r.lastEvent.device ? ' ' + r.lastEvent.device : '') + ': ' + r.lastEvent.reason + ' (' + r.lastEvent.time + ')' : '-'));
    return [tr, wavesRow(r)];
  }));
  if (!rs.length) { const tr = el('tr'); const td = el('td', 'no rollouts', 'empty'); td.colSpan = 10; tr.appendChild(td); rb.appendChild(tr); }
  // Devices.
  const db = $('devices');
  db.replaceChildren(...ds.map((d) => {
    const tr = el('tr'); tr.dataset.device = d.device;
    tr.className = [d.attention ? 'attention' : '', d.online === false ? 'offline' : ''].join(' ').trim();
    tr.appendChild(el('td', d.device));
    tr.appendChild(el('td', d.group || '-'));
    tr.appendChild(stateCell(d.state, [d.rollback ? 'rollback' : '', d.silent ? 'silent' : ''].filter(Boolean)));
    const p = el('td');
    if (d.state === 'downloading') { const pr = el('progress'); pr.max = 1; pr.value = d.progress; p.appendChild(pr); p.appendChild(el('span', ' ' + Math.floor(d.progress * 100) + ' %' + (d.rateBps ? ', ' + Math.round(d.rateBps / 1024) + ' KiB/s' : ''))); }
    tr.appendChild(p);
    const run = el('td'); run.appendChild(el('code', short(d.running))); run.title = d.running || ''; tr.appendChild(run);
    const tgt = el('td'); tgt.appendChild(el('code', short(d.target))); tgt.title = d.target || ''; tr.appendChild(tgt);
    const why = el('td', null, 'why'); if (d.reason) why.appendChild(el('span', d.reason)); if (d.message) why.appendChild(el('span', d.message, 'msg')); tr.appendChild(why);
    tr.appendChild(el('td', d.online === null ? '?' : d.online ? 'online' : 'offline'));
    tr.appendChild(el('td', ago(d.lastSeen), 'seen'));
    return tr;
  }));
  if (!ds.length) { const tr = el('tr'); const td = el('td', devices.size ? 'no device matches the filter' : 'no devices yet', 'empty'); td.colSpan = 9; tr.appendChild(td); db.appendChild(tr); }
  renderDelivery(ds);
  $('now').textContent = new Date(serverNow()).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
}
const secs = (n) => n >= 3600 ? (n / 3600).toFixed(1) + ' h' : n >= 120 ? Math.round(n / 60) + ' min' : Math.round(n) + ' s';
const pctOf = (x) => Math.round(x * 1000) / 10 + ' %';
function bytes(n) { return n === null || n === undefined ? '-' : n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KiB' : (n / 1048576).toFixed(2) + ' MiB'; }
function thresholds(w) {
  const ok = w.successThreshold === null ? '' : 'ok >= ' + pctOf(w.successThreshold);
  const f = w.failureThreshold || {};
  const fail = [f.count !== undefined ? f.count + ' failed' : '', f.share !== undefined ? pctOf(f.share) + ' failed' : ''].filter(Boolean).join(' or ');
  return [ok, fail ? 'halt at ' + fail : '', w.soakSeconds !== null ? 'soak ' + secs(w.soakSeconds) : '', w.timeoutSeconds !== null ? 'timeout ' + secs(w.timeoutSeconds) : '', w.offline ? 'offline: ' + w.offline : '', w.window ? 'window ' + w.window : ''].filter(Boolean).join(', ');
}
// Where one wave stands: its soak (from thresholdAt) or its timeout (from publishedAt), on the server's clock.
function waveState(r, w, k) {
  const cur = k === r.wave - 1;
  if (w.rolledBack) return 'rolled back';
  if (!w.started) return 'not started';
  if (k < r.wave - 1 || (cur && r.state === 'completed')) return 'done';
  if (!cur || r.terminal) return r.state + (w.timedOut ? ' (timed out)' : '');
  if (w.timedOut) return 'timed out';
  if (r.state === 'soaking' && w.thresholdAt && w.soakSeconds !== null) {
    const left = w.soakSeconds - (serverNow() - Date.parse(w.thresholdAt)) / 1000;
    return 'soaking: ' + (left > 0 ? secs(left) + ' of ' + secs(w.soakSeconds) + ' left' : 'soak over');
  }
  if (w.publishedAt && w.timeoutSeconds !== null) {
    const left = w.timeoutSeconds - (serverNow() - Date.parse(w.publishedAt)) / 1000;
    return r.state + ': ' + (left > 0 ? 'timeout in ' + secs(left) : 'past its timeout');
  }
  return r.state;
}
function wavesRow(r) {
  const tr = el('tr', null, 'waves'); const td = el('td'); td.colSpan = 10;
  const t = el('table', null, 'wavetable');
  r.waveList.forEach((w, k) => {
    const row = el('tr', null, k === r.wave - 1 && !r.terminal ? 'current' : ''); row.dataset.wave = String(k + 1);
    row.appendChild(el('td', 'wave ' + (k + 1) + ': ' + w.group));
    row.appendChild(el('td', thresholds(w), 'mute'));
    const p = el('td'); const c = w.counts;
    if (w.started) { const pr = el('progress'); pr.max = Math.max(c.total, 1); pr.value = c.ok; p.appendChild(pr); p.appendChild(el('span', ' ' + c.ok + '/' + c.total + ' ok' + (c.failed ? ', ' + c.failed + ' failed' : '') + (c.pending ? ', ' + c.pending + ' pending' : '') + (c.offline ? ', ' + c.offline + ' offline' : '') + (c.skipped ? ', ' + c.skipped + ' skipped' : ''), 'wprog')); }
    else p.appendChild(el('span', '-'));
    row.appendChild(p);
    row.appendChild(el('td', waveState(r, w, k) + (w.seq !== null ? ' (release ' + w.seq + ')' : '') + (w.blocking.length ? '; blocked by ' + w.blocking.join(', ') : ''), 'wstate'));
    t.appendChild(row);
  });
  td.appendChild(t); tr.appendChild(td);
  return tr;
}
// Bytes the link carried to each device (status wire.bytesIn, else the payload bytes held) against a full-model download (the release's full-model step).
function renderDelivery(ds) {
  let got = 0, full = 0, both = 0, bothFull = 0;
  const rows = ds.filter((d) => d.state !== null).map((d) => {
    const delivered = d.bytesIn !== null ? d.bytesIn : d.bytes;
    const tr = el('tr'); tr.dataset.device = d.device;
    tr.appendChild(el('td', d.device)); tr.appendChild(el('td', d.group || '-'));
    tr.appendChild(el('td', bytes(delivered) + (d.bytesIn === null ? ' (payload)' : ''), 'num'));
    tr.appendChild(el('td', d.totalBytes ? bytes(d.totalBytes) : '-', 'num'));
    tr.appendChild(el('td', bytes(d.modelBytes), 'num'));
    tr.appendChild(el('td', d.modelBytes ? pctOf(delivered / d.modelBytes) : d.totalBytes ? 'update ' + bytes(d.totalBytes) : '-', 'num share'));
    got += delivered;
    if (d.modelBytes) { full += d.modelBytes; both += delivered; bothFull += d.modelBytes; }
    return tr;
  });
  const tot = el('tr', null, 'total'); tot.dataset.device = '';
  tot.appendChild(el('td', 'total (' + rows.length + ' devices)')); tot.appendChild(el('td', ''));
  tot.appendChild(el('td', bytes(got), 'num')); tot.appendChild(el('td', ''));
  tot.appendChild(el('td', full ? bytes(full) : 'unknown (no full-model step in the releases)', 'num'));
  tot.appendChild(el('td', bothFull ? pctOf(both / bothFull) + ' (saved ' + bytes(bothFull - both) + ')' : '-', 'num share'));
  $('delivery').replaceChildren(...rows, tot);
}
function load(s) {
  skew = Date.now() - s.time;
  devices.clear(); rollouts.clear();
  for (const d of s.devices) devices.set(d.device, d);
  for (const r of s.rollouts) rollouts.set(r.rollout, r);
}
function connect() {
  const es = new EventSource('events');
  es.addEventListener('snapshot', (e) => {
    load(JSON.parse(e.data));
    $('conn').textContent = 'live'; $('conn').className = 'live'; schedule();
  });
  es.addEventListener('device', (e) => { const c = JSON.parse(e.data); if (c.row) devices.set(c.device, c.row); else devices.delete(c.device); schedule(); });
  es.addEventListener('rollout', (e) => { const c = JSON.parse(e.data); if (c.row) rollouts.set(c.rollout, c.row); else rollouts.delete(c.rollout); schedule(); });
  es.onerror = () => { $('conn').textContent = 'reconnecting...'; $('conn').className = 'down'; };
}
$('group').addEventListener('change', () => { const v = $('group').value; if (v) params.set('group', v); else params.delete('group'); history.replaceState(null, '', params.toString() ? '?' + params : location.pathname); render(); });
$('search').addEventListener('input', schedule);
$('only').addEventListener('change', schedule);
setInterval(render, 1000);
function setConn(text, cls, why) { $('conn').textContent = text; $('conn').className = cls || ''; $('conn').title = why || ''; }
// MQTT over WebSocket: the bundled view model (dashboard.js) subscribes read-only with the operator's login and hands over rows.
function live(cfg) {
  const problem = (t) => { setConn('not connected', 'down', t); $('problem').textContent = t; $('problem').hidden = false; };
  if (!cfg.ws) return problem(cfg.problem || 'no broker WebSocket listener is configured');
  if (!window.fleetLive) return problem('the browser script (dashboard.js) did not load: ' + (cfg.problem || 'see the server log'));
  const KEY = 'fleet-dashboard-login', form = $('login');
  let feed = null;
  function go(username, password) {
    if (feed) feed.close();
    devices.clear(); rollouts.clear(); skew = 0; form.hidden = true; $('who').textContent = username + ' @ ' + cfg.ws;
    feed = window.fleetLive.connect({ url: cfg.ws, username, password, prefix: cfg.prefix, staleMs: cfg.staleMs }, {
      state: (s, why) => {
        if (s === 'live') setConn('live', 'live', 'MQTT over WebSocket ' + cfg.ws);
        else if (s === 'refused') { setConn('login refused', 'down', why); $('loginmsg').textContent = why || 'login refused'; form.hidden = false; try { sessionStorage.removeItem(KEY); } catch (e) {} }
        else if (s === 'reconnecting') setConn('reconnecting...', 'down', why);
        else if (s === 'connecting') setConn('connecting...', '', cfg.ws);
        schedule();
      },
      device: (id, row) => { if (row) devices.set(id, row); else devices.delete(id); schedule(); },
      rollout: (id, row) => { if (row) rollouts.set(id, row); else rollouts.delete(id); schedule(); },
    });
  }
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const u = $('user').value, p = $('pass').value;
    try { sessionStorage.setItem(KEY, JSON.stringify({ u, p })); } catch (e) {}
    go(u, p);
  });
  // The login: the URL fragment (#user=NAME&password=PW, never sent to the server; taken out of the address bar at once), else this tab's session, else the form.
  const frag = new URLSearchParams(location.hash.slice(1));
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(KEY) || 'null'); } catch (e) {}
  if (frag.get('user') && frag.get('password') !== null) {
    history.replaceState(null, '', location.pathname + location.search);
    try { sessionStorage.setItem(KEY, JSON.stringify({ u: frag.get('user'), p: frag.get('password') })); } catch (e) {}
    go(frag.get('user'), frag.get('password'));
  } else if (saved && saved.u) go(saved.u, saved.p);
  else { setConn('log in', 'down', 'MQTT over WebSocket ' + cfg.ws); form.hidden = false; $('user').focus(); }
}
// First paint from the snapshot the server put in the page; the event stream then takes over.
const initial = document.getElementById('initial');
if (initial && initial.textContent) { load(JSON.parse(initial.textContent)); render(); }
const config = document.getElementById('config');
const cfg = config && config.textContent ? JSON.parse(config.textContent) : null;
if (cfg && cfg.mode === 'mqtt') { live(cfg); render(); } else connect();
`;

/** The page's MQTT-over-WebSocket mode (operator/dashboard-live.ts). */
export interface LivePageConfig {
  /** ws:// URL of the broker's WebSocket listener; null: none (the page says `problem`). */
  ws: string | null;
  prefix: string;
  staleMs: number;
  /** Shown on the page when it cannot connect. */
  problem: string | null;
  /** URL of the bundled script (operator/browser/bundle.ts), relative to the page. */
  script: string;
}

const esc = (s: string): string => s.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);

export function dashboardPage(opts: { title?: string; nonce: string; initial?: unknown; live?: LivePageConfig }): string {
  // JSON inside <script>: '<' escaped so no text can close the element.
  const initial = opts.initial === undefined ? '' : JSON.stringify(opts.initial).replace(/</g, '\\u003c');
  const live = opts.live ? JSON.stringify({ mode: 'mqtt', ...opts.live }).replace(/</g, '\\u003c') : '';
  const title = esc(opts.title ?? 'fleet dashboard');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>${title}</title><style nonce="${opts.nonce}">${CSS}</style></head>
<body>
<header><h1>${title}</h1><span id="conn">connecting...</span><span id="now" class="chip"></span>
<label>group <select id="group"></select></label><label>device <input id="search" type="search" placeholder="filter"></label>
<label><input id="only" type="checkbox"> only problems and offline</label></header>
<main>
${
  opts.live
    ? `<p id="problem" class="card" hidden></p>
<form id="login" class="login" hidden autocomplete="on"><strong>Log in to the broker</strong> <span class="mute">(MQTT over WebSocket, read only: a <code>viewer</code> or <code>operator</code> user)</span><br>
<label>user <input id="user" name="username" autocomplete="username" required></label> <label>password <input id="pass" name="password" type="password" autocomplete="current-password"></label>
<button id="go" type="submit">connect</button> <span id="loginmsg" class="why"></span></form>
<p class="note">Fed live by MQTT over WebSocket: <span id="who">not connected</span></p>`
    : ''
}
<div id="counts" class="chips"></div>
<div id="alerts"></div>
<h2>Rollouts</h2>
<table><thead><tr><th>rollout</th><th>state</th><th>wave</th><th>ok</th><th>failed</th><th>pending</th><th>offline</th><th>progress</th><th>why</th><th>last event</th></tr></thead><tbody id="rollouts"></tbody></table>
<h2>Devices</h2>
<table><thead><tr><th>device</th><th>group</th><th>state</th><th>progress</th><th>running</th><th>target</th><th>reason</th><th>online</th><th>last seen</th></tr></thead><tbody id="devices"></tbody></table>
<h2>Delivery</h2>
<p class="note">Bytes delivered to each device (its status's wire.bytesIn: everything its link carried since the agent started; else the update bytes it holds) against shipping the whole model (the size of the full-model step of its group's release; unknown when the release has none, then the update's payload size is shown).</p>
<table><thead><tr><th>device</th><th>group</th><th>delivered</th><th>update payload</th><th>full model</th><th>delivered / full</th></tr></thead><tbody id="delivery"></tbody></table>
</main>
${initial ? `<script type="application/json" id="initial" nonce="${opts.nonce}">${initial}</script>` : ''}
${
  live
    ? `<script type="application/json" id="config" nonce="${opts.nonce}">${live}</script>
<script nonce="${opts.nonce}" src="${esc(opts.live!.script)}"></script>`
    : ''
}
<script nonce="${opts.nonce}">${JS}</script>
</body></html>
`;
}
