// kgate UI: fills the server-rendered pages from the JSON API. No framework, no build step.
'use strict';
const $ = (s, r = document) => r.querySelector(s);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const csrf = $('meta[name=csrf]')?.content || '';
const page = document.body.dataset.page;
const arg = document.body.dataset.arg;

async function api(method, path, body) {
  const opt = { method, headers: {} };
  if (body !== undefined) { opt.headers['content-type'] = 'application/json'; opt.body = JSON.stringify(body); }
  if (method !== 'GET') opt.headers['x-csrf-token'] = csrf;
  const r = await fetch(path, opt);
  if (r.status === 401) { location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search); throw new Error('no session'); }
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || r.status + ' ' + r.statusText);
  return j;
}
const get = (p) => api('GET', p);
const show = (id, html) => { const el = document.getElementById(id); if (el) el.innerHTML = html; };
const fail = (id, e) => show(id, `<p class="error">${esc(e.message || e)}</p>`);
const num = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en'));
const card = (v, label) => `<div class="card"><b>${v}</b><span>${esc(label)}</span></div>`;
const enc = encodeURIComponent;
function table(cols, rows, rowClass) {
  const head = cols.map(([h, , c]) => `<th${c ? ` class="${c}"` : ''}>${esc(h)}</th>`).join('');
  const body = rows.map((r) => `<tr${rowClass ? ` class="${rowClass(r)}"` : ''}>` + cols.map(([, f, c]) => `<td${c ? ` class="${c}"` : ''}>${f(r)}</td>`).join('') + '</tr>').join('');
  return rows.length ? `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>` : '<p class="muted">None.</p>';
}
function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 0) return 'forever';
  const units = [['d', 86400000], ['h', 3600000], ['m', 60000], ['s', 1000]];
  for (const [u, n] of units) if (ms >= n && ms % n === 0) return ms / n + u;
  return ms + 'ms';
}
const time = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').replace('Z', '') : '–');
const fmtValue = (v, how) => (how === 'avro' || how === 'json' ? JSON.stringify(v, null, 2) : String(v ?? ''));
function formStatus(form, text, ok) { const s = $('.status', form); if (s) { s.className = 'status ' + (ok ? 'ok' : 'error'); s.textContent = text; } }

$('#logout')?.addEventListener('click', async () => { await api('POST', '/logout').catch(() => {}); location.href = '/login'; });

// ---------------------------------------------------------------------------------- overview
// A small line chart of the last rates (two series: in and out), scaled to their maximum.
function spark(points, keys) {
  if (points.length < 2) return '<span class="muted">…</span>';
  const w = 120, h = 24, max = Math.max(1e-9, ...points.flatMap((p) => keys.map((k) => p[k] || 0)));
  const line = (k, c) => `<polyline fill="none" stroke="${c}" stroke-width="1.5" points="${points.map((p, i) => `${(i / (points.length - 1)) * w},${h - 1 - ((p[k] || 0) / max) * (h - 2)}`).join(' ')}"/>`;
  return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}"><title>in (blue) and out (green) per second, up to ${max.toFixed(1)}/s</title>${keys.map((k, i) => line(k, colors[i * 3 % colors.length])).join('')}</svg>`;
}
const rate = (r) => (r === null || r === undefined ? '' : ` <small class="muted">${r.toFixed(1)}/s</small>`);
const ms = (v) => (v === null || v === undefined ? '–' : v < 10 ? v.toFixed(2) : v.toFixed(1));

// Per pipeline and per source (GET /api/overview's `run`): counts with rates between two polls,
// the accept → ack latency, connection states, the buffer, and each pipeline's rates as a line.
function runView(run, prev, hist, now) {
  const dt = (p, k, v) => (p && now > p.t ? Math.max(0, (v - p[k]) / ((now - p.t) / 1000)) : null);
  const rows = run.pipelines.map((p) => {
    const before = prev[p.name];
    const r = { ...p, in_r: p.in === null ? null : dt(before, 'in', p.in), out_r: dt(before, 'out', p.out), dlq_r: dt(before, 'dlq', p.dead_lettered) };
    const dc = before ? p.latency.count - before.n : 0;
    r.window_ms = dc > 0 ? (1000 * (p.latency.sum_s - before.s)) / dc : null;
    prev[p.name] = { t: now, in: p.in, out: p.out, dlq: p.dead_lettered, n: p.latency.count, s: p.latency.sum_s };
    for (const src of p.sources) {
      const k = p.name + ' ' + src.source;
      src.rate = dt(prev[k], 'v', src.received);
      prev[k] = { t: now, v: src.received };
    }
    const h = hist[p.name] || (hist[p.name] = []);
    if (r.out_r !== null) { h.push({ in: r.in_r ?? 0, out: r.out_r }); if (h.length > 90) h.shift(); }
    r.spark = spark(h, ['in', 'out']);
    return r;
  });
  const states = (p) => p.sources.map((s) => `<span class="badge state-${esc(String(s.state).split(' ')[0])}">${esc(s.state)}</span>`).join(' ');
  const b = run.buffer;
  const fill = b.max_records ? (100 * b.inflight) / b.max_records : null;
  return '<h3>By pipeline</h3>' + table([['pipeline', (p) => `<b>${esc(p.name)}</b><br><small class="muted">${esc(p.source)} → ${esc(p.topic)}</small>`],
    ['sources', states], ['in', (p) => (p.in === null ? '<span class="muted" title="HTTP counters are per route, shared by every pipeline">–</span>' : num(p.in) + rate(p.in_r)), 'num'],
    ['out (acked)', (p) => num(p.out) + rate(p.out_r), 'num'], ['dead-lettered', (p) => num(p.dead_lettered) + rate(p.dlq_r), 'num'],
    ['accept→ack ms p50 / p99', (p) => `${ms(p.latency.p50_ms)} / ${ms(p.latency.p99_ms)}`, 'num'],
    ['last 2 s mean ms', (p) => ms(p.window_ms), 'num'], ['rate, last 3 min', (p) => p.spark]], rows) +
    `<p class="muted">Producer buffer: ${num(b.inflight)} records in flight of ${num(b.max_records)} per producer (<span id="buffer-fill">${fill === null ? '–' : fill.toFixed(1)}%</span>). Latency: from the source receiving an event to Kafka's ack, over the pipeline's topics since the start.</p>` +
    '<h3>By source</h3>' + table([['pipeline', (s) => esc(s.pipeline)], ['source', (s) => esc(s.source)], ['state', (s) => `<span class="badge state-${esc(String(s.state).split(' ')[0])}">${esc(s.state)}</span>`],
      ['received', (s) => num(s.received) + rate(s.rate), 'num'], ['connections', (s) => (s.connections === undefined ? '' : `${num(s.connections)} / ${num(s.disconnections)} ended`), 'num'],
      ['errors', (s) => (s.errors === undefined ? '' : num(s.errors)), 'num'],
      ['in flight', (s) => (s.inflight === undefined ? (s.lag === undefined ? '' : `lag ${num(s.lag)}`) : `${num(s.inflight)} of ${num(s.max_inflight)}`), 'num']],
    rows.flatMap((p) => p.sources.map((s) => ({ ...s, pipeline: p.name }))));
}

async function overview() {
  const last = {}, prev = {}, hist = {};
  async function load() {
    try {
      const o = await get('/api/overview');
      const c = o.cluster;
      const reg = o.registry ? (o.registry.error ? `<span class="error">${esc(o.registry.error)}</span>` : `${num(o.registry.subjects)}`) : '–';
      show('cluster', card(esc(c.cluster_id || '–'), 'cluster id') + card(num(c.brokers.length), 'brokers') + card(num(c.topics), 'topics') +
        card(num(c.partitions), 'partitions') + card(typeof o.groups === 'number' ? num(o.groups) : '?', 'consumer groups') +
        card(reg, 'schema subjects' + (o.registry ? ` at ${o.registry.url}` : ' (no registry)')) + card(esc(o.dlq_topic), 'DLQ topic'));
      show('brokers', table([['id', (b) => b.id, 'num'], ['host', (b) => esc(b.host)], ['port', (b) => b.port, 'num'], ['controller', (b) => (b.controller ? 'yes' : '')]], c.brokers));
      if (!o.pipelines) {
        show('pipelines', '<p class="muted">Not running inside <code>kgate run</code>: add <code>ui:</code> to a gateway config to see its pipelines here.</p>');
        return;
      }
      const now = Date.now();
      try { show('run', o.run && o.run.pipelines.length ? runView(o.run, prev, hist, now) : ''); } catch (e) { fail('run', e); }
      const rows = o.pipelines.filter((s) => s.name.startsWith('kgate_') || s.name.startsWith('kafka_'));
      const sums = {};
      for (const s of rows) {
        const k = s.name + JSON.stringify(s.labels);
        const prev = last[k];
        s.rate = prev && s.name.endsWith('_total') && now > prev.t ? (s.value - prev.v) / ((now - prev.t) / 1000) : null;
        last[k] = { v: s.value, t: now };
        const sum = sums[s.name] || (sums[s.name] = { v: 0, r: null });
        sum.v += s.value;
        if (s.rate !== null) sum.r = (sum.r || 0) + s.rate;
      }
      const total = (name, label) => {
        const s = sums[name] || { v: 0, r: null };
        return card(num(s.v) + (s.r === null ? '' : ` <small class="muted">${s.r.toFixed(1)}/s</small>`), label);
      };
      const received = Object.keys(sums).filter((n) => n.endsWith('messages_received_total') || n === 'kafka_consumer_records_total' || n === 'kgate_device_frames_total');
      const inSum = received.reduce((a, n) => a + sums[n].v, 0);
      show('totals', card(num(inSum), 'received by sources') + total('kafka_messages_published_total', 'published to Kafka') +
        total('kafka_dlq_published_total', 'dead-lettered') + total('kgate_events_rejected_total', 'rejected') +
        total('kafka_delivery_errors_total', 'delivery errors') + total('kgate_producer_inflight_records', 'in flight'));
      // By topic, by feed URL and by pipeline: one row each, one column per counter (with its
      // rate), and the mean produce request latency (Kafka's ack) per topic.
      const pivot = (key) => {
        const by = {};
        for (const s of rows) {
          const v = s.labels[key];
          if (v === undefined || s.name.endsWith('_bucket')) continue;
          const r = by[v] || (by[v] = { [key]: v });
          const short = s.name.replace(/^(kgate|kafka)_/, '').replace(/^producer_websocket_/, 'websocket_').replace(/_total$/, '');
          r[short] = (r[short] || 0) + s.value;
          if (s.rate !== null) r[short + ' /s'] = (r[short + ' /s'] || 0) + s.rate;
        }
        const out = Object.values(by);
        for (const r of out) {
          if (r.producer_request_duration_seconds_count) r['mean ack ms'] = (1000 * r.producer_request_duration_seconds_sum) / r.producer_request_duration_seconds_count;
          for (const k of Object.keys(r)) if (k.includes('duration_seconds_')) delete r[k];
        }
        return out;
      };
      const pivotTable = (key, title) => {
        const rs = pivot(key);
        if (!rs.length) return '';
        const cols = [...new Set(rs.flatMap((r) => Object.keys(r)))].filter((k) => k !== key && !k.endsWith(' /s'));
        return `<h3>${esc(title)}</h3>` + table([[key, (r) => esc(r[key])], ...cols.map((c) => [c.replaceAll('_', ' '), (r) => {
          const v = r[c]; const rate = r[c + ' /s'];
          if (v === undefined) return '';
          return (c === 'mean ack ms' ? v.toFixed(1) : num(v)) + (rate ? ` <small class="muted">${rate.toFixed(1)}/s</small>` : '');
        }, 'num'])], rs);
      };
      show('pipelines', '<h3>Every counter</h3>' + pivotTable('pipeline', 'By pipeline label') + pivotTable('url', 'By feed') + pivotTable('topic', 'By topic') + pivotTable('dlq_topic', 'By DLQ topic') +
        '<details><summary>Every series (' + rows.length + ')</summary>' + table([['series', (s) => esc(s.name)], ['labels', (s) => esc(Object.entries(s.labels).map(([k, v]) => `${k}=${v}`).join(' '))],
        ['value', (s) => num(s.value), 'num'], ['per second', (s) => (s.rate === null ? '' : s.rate.toFixed(1)), 'num']], rows) + '</details>');
    } catch (e) { fail('cluster', e); }
  }
  await load();
  setInterval(load, 2000);
}

// ------------------------------------------------------------------------------------ topics
async function topics() {
  let all = [];
  const render = () => {
    const q = $('#search').value.toLowerCase();
    const rows = all.filter((t) => t.name.toLowerCase().includes(q));
    show('topics', `<p class="muted">${rows.length} of ${all.length} topics</p>` + table([
      ['topic', (t) => `<a href="/topics/${enc(t.name)}">${esc(t.name)}</a>`], ['partitions', (t) => t.partitions, 'num'],
      ['replication', (t) => t.replication_factor, 'num'], ['messages', (t) => num(t.messages), 'num'],
      ['retention', (t) => duration(t.retention_ms)], ['cleanup', (t) => esc(t.cleanup_policy || '')]], rows));
  };
  let reads = 0;
  const load = async () => {
    const mine = ++reads;
    try {
      const got = (await get('/api/topics' + ($('#internal').checked ? '?internal=true' : ''))).topics;
      if (mine === reads) { all = got; render(); }
    } catch (e) { if (mine === reads) fail('topics', e); }
  };
  $('#search').addEventListener('input', render);
  $('#internal').addEventListener('change', load);
  $('#create-topic')?.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    try {
      await api('POST', '/api/topics', { name: f.name.value, partitions: Number(f.partitions.value || 1), retention: f.retention.value || null });
      formStatus(f, `created ${f.name.value}`, true);
      await load();
    } catch (e) { formStatus(f, e.message, false); }
  });
  await load();
}

// ------------------------------------------------------------------------------------- topic
const messageTable = (records) => table([
  ['partition', (r) => r.partition, 'num'], ['offset', (r) => r.offset, 'num'], ['time', (r) => esc(time(r.timestamp))],
  ['key', (r) => `<span class="key">${esc(r.key ?? '')}</span>`],
  ['headers', (r) => `<pre>${esc(Object.entries(r.headers).map(([k, v]) => `${k}: ${v}`).join('\n'))}</pre>`],
  ['value', (r) => `<span class="badge ${esc(r.value_as)}">${esc(r.value_as)}</span>${r.value_truncated ? ` <span class="muted">the first 64 KiB of ${num(r.value_truncated)} bytes</span>` : ''}<pre>${esc(fmtValue(r.value, r.value_as))}</pre>`]], records);
async function topic() {
  const base = `/api/topics/${enc(arg)}`;
  try {
    const t = await get(base);
    show('summary', card(t.partitions.length, 'partitions') + card(t.replication_factor, 'replication') + card(num(t.messages), 'messages'));
    show('partitions', table([['partition', (p) => p.id, 'num'], ['leader', (p) => p.leader, 'num'], ['replicas', (p) => p.replicas.join(', ')],
      ['in sync', (p) => p.isr.join(', ')], ['low', (p) => num(p.low), 'num'], ['high', (p) => num(p.high), 'num'], ['messages', (p) => num(p.messages), 'num']], t.partitions));
    show('configs', table([['config', (c) => esc(c.name)], ['value', (c) => (c.sensitive ? '<span class="muted">(sensitive)</span>' : esc(c.value ?? ''))],
      ['source', (c) => (c.default ? '<span class="muted">default</span>' : `<span class="badge">${esc(c.source)}</span>`)]], t.configs, (c) => (c.default ? '' : 'set')));
    const sel = $('#browse [name=partition]');
    for (const p of t.partitions) sel.insertAdjacentHTML('beforeend', `<option value="${p.id}">${p.id}</option>`);
  } catch (e) { fail('summary', e); }

  const f = $('#browse');
  const fromChanged = () => { f.offset.hidden = f.from.value !== 'offset'; f.timestamp.hidden = f.from.value !== 'timestamp'; };
  f.from.addEventListener('change', fromChanged);
  let next = null;
  let reads = 0; // only the newest read is drawn (the page's first may finish after a search)
  async function read(cursor) {
    const mine = ++reads;
    const q = new URLSearchParams({ limit: f.limit.value });
    if (f.partition.value !== '') q.set('partition', f.partition.value);
    if (cursor) q.set('cursor', cursor);
    else if (f.from.value === 'offset') q.set('offset', f.offset.value || '0');
    else if (f.from.value === 'timestamp') q.set('timestamp', String(new Date(f.timestamp.value).getTime() || 0));
    else q.set('from', f.from.value);
    for (const k of ['key', 'value', 'header']) if (f[k].value) q.set(k, f[k].value);
    show('messages', '<p class="muted">Reading…</p>');
    try {
      const pg = await get(`${base}/messages?${q}`);
      if (mine !== reads) return null;
      next = pg.next;
      $('#next').hidden = !next;
      $('#page-info').textContent = `${pg.records.length} shown, ${num(pg.scanned)} read${pg.truncated ? ' (stopped at the time limit: narrow the filter or go on with the next page)' : ''}`;
      show('messages', messageTable(pg.records));
      return pg;
    } catch (e) { if (mine === reads) fail('messages', e); return null; }
  }
  f.addEventListener('submit', (ev) => { ev.preventDefault(); read(null); });
  $('#next').addEventListener('click', () => read(next));
  // Live tail: from the end, then every 2 s whatever arrived since (newest first, 500 kept).
  let tailTimer = null;
  f.tail.addEventListener('change', async () => {
    clearInterval(tailTimer);
    if (!f.tail.checked) return;
    f.from.value = 'end'; fromChanged();
    let pg = await read(null);
    let seen = pg ? pg.records.slice().reverse() : [];
    let position = pg ? pg.position : '';
    tailTimer = setInterval(async () => {
      if (!f.tail.checked) { clearInterval(tailTimer); return; }
      const q = new URLSearchParams({ limit: '500', cursor: position });
      if (f.partition.value !== '') q.set('partition', f.partition.value);
      for (const k of ['key', 'value', 'header']) if (f[k].value) q.set(k, f[k].value);
      try {
        const p = await get(`${base}/messages?${q}`);
        position = p.position;
        seen = p.records.slice().reverse().concat(seen).slice(0, 500);
        $('#page-info').textContent = `live: ${seen.length} shown, newest first`;
        show('messages', messageTable(seen));
      } catch (e) { fail('messages', e); }
    }, 2000);
  });
  read(null);

  $('#produce')?.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const p = ev.target;
    try {
      let value = p.value.value;
      if (p.format.value !== 'text') value = JSON.parse(value);
      const headers = {};
      for (const h of p.headers.value.split(',').map((s) => s.trim()).filter(Boolean)) { const [k, ...v] = h.split('='); headers[k.trim()] = v.join('=').trim(); }
      const r = await api('POST', `${base}/messages`, { key: p.key.value || null, value, headers, format: p.format.value, subject: p.subject.value || null });
      formStatus(p, `sent: partition ${r.partition}, offset ${r.offset}`, true);
    } catch (e) { formStatus(p, e.message, false); }
  });
  $('#edit-retention')?.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const r = ev.target;
    try {
      const a = await api('POST', `${base}/configs`, { retention: r.retention.value });
      formStatus(r, a.changes.length ? a.changes.map((c) => `${c.name}: ${c.old ?? 'default'} → ${c.new}`).join('; ') : 'no change', true);
    } catch (e) { formStatus(r, e.message, false); }
  });
  $('#add-partitions')?.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const a = ev.target;
    try { await api('POST', `${base}/partitions`, { total: Number(a.total.value) }); formStatus(a, `now ${a.total.value} partitions`, true); } catch (e) { formStatus(a, e.message, false); }
  });
  $('#delete-topic')?.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const d = ev.target;
    if (d.confirm.value !== arg) { formStatus(d, 'the name does not match', false); return; }
    try { await api('DELETE', base); location.href = '/topics'; } catch (e) { formStatus(d, e.message, false); }
  });
}

// ------------------------------------------------------------------------------------ groups
async function groups() {
  let all = [];
  const render = () => {
    const q = $('#search').value.toLowerCase();
    const rows = all.filter((g) => g.group.toLowerCase().includes(q));
    show('groups', table([['group', (g) => `<a href="/groups/${enc(g.group)}">${esc(g.group)}</a>`], ['state', (g) => esc(g.state)],
      ['members', (g) => g.members, 'num'], ['total lag', (g) => num(g.lag), 'num']], rows));
  };
  $('#search').addEventListener('input', render);
  try { all = (await get('/api/groups')).groups; render(); } catch (e) { fail('groups', e); }
}

// Lag over time (GET /api/groups/{group}/history): the total, and each topic when there are
// several, as lines; one sample is drawn as a dot.
const colors = ['#1f4e79', '#bf3989', '#9a6700', '#1a7f37', '#cf222e', '#6a737d'];
function lagChart(h) {
  const ss = h.samples || [];
  if (!ss.length) return '<p class="muted">No samples yet.</p>';
  const topics = [...new Set(ss.flatMap((s) => Object.keys(s.topics || {})))].slice(0, colors.length - 1);
  const lines = [['total', (s) => s.total_lag]].concat(topics.length > 1 ? topics.map((t) => [t, (s) => (s.topics || {})[t] ?? 0]) : []);
  // Drawn at the box's own size (140 px high, as wide as the page), so text is not stretched.
  const w = Math.max(300, ($('#chart')?.clientWidth || 602) - 2), h2 = 138, max = Math.max(1, ...ss.map((s) => s.total_lag));
  const t0 = ss[0].time_ms, span = Math.max(1, ss[ss.length - 1].time_ms - t0);
  const x = (s) => (ss.length < 2 ? w / 2 : ((s.time_ms - t0) / span) * w), y = (v) => h2 - (v / max) * (h2 - 14);
  let svg = '';
  lines.forEach(([name, f], i) => {
    const c = colors[i % colors.length];
    svg += ss.length < 2 ? `<circle cx="${x(ss[0])}" cy="${y(f(ss[0]))}" r="4" fill="${c}"><title>${esc(name)}: ${num(f(ss[0]))}</title></circle>`
      : `<polyline fill="none" stroke="${c}" stroke-width="${i ? 1.5 : 2.5}" points="${ss.map((s) => `${x(s)},${y(f(s))}`).join(' ')}"><title>${esc(name)}</title></polyline>`;
  });
  const legend = lines.map(([name], i) => `<span><svg width="10" height="10"><rect width="10" height="10" fill="${colors[i % colors.length]}"/></svg> ${esc(name)}</span>`).join(' ');
  return `<svg class="chart" id="lag-chart" viewBox="0 0 ${w} ${h2}">${svg}<text x="4" y="12" font-size="11">${num(max)}</text></svg>` +
    `<div class="bar muted"><span>${esc(time(t0))}</span><span>→ ${esc(time(ss[ss.length - 1].time_ms))} UTC, ${ss.length} of at most ${num(h.max_samples)} samples, one every ${h.interval_ms / 1000} s</span></div>` +
    (lines.length > 1 ? `<div class="bar">${legend}</div>` : '');
}

async function group() {
  let topicsListed = false;
  async function load() {
    try {
      const g = await get(`/api/groups/${enc(arg)}`);
      show('summary', card(esc(g.state), 'state') + card(g.members.length, 'members') + card(num(g.total_lag), 'total lag') + card(esc(g.protocol || '–'), 'assignor'));
      get(`/api/groups/${enc(arg)}/history`).then((h) => show('chart', lagChart(h)), (e) => fail('chart', e));
      show('partitions', table([['topic', (p) => `<a href="/topics/${enc(p.topic)}">${esc(p.topic)}</a>`], ['partition', (p) => p.partition, 'num'],
        ['committed', (p) => num(p.committed), 'num'], ['end', (p) => num(p.end), 'num'], ['lag', (p) => num(p.lag), 'num'], ['member', (p) => esc(p.member || '')]], g.partitions));
      const sel = $('#reset [name=topic]');
      if (sel && !topicsListed) {
        topicsListed = true;
        for (const t of [...new Set(g.partitions.map((p) => p.topic))]) sel.insertAdjacentHTML('beforeend', `<option>${esc(t)}</option>`);
      }
      show('members', table([['member', (m) => esc(m.id)], ['client', (m) => esc(m.client_id)], ['host', (m) => esc(m.host)],
        ['assignment', (m) => esc(m.assignment.map((a) => `${a.topic}[${a.partitions.join(',')}]`).join(' '))]], g.members));
    } catch (e) { fail('summary', e); }
  }
  $('#delete-group')?.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const d = ev.target;
    if (d.confirm.value !== arg) { formStatus(d, 'the name does not match', false); return; }
    try { await api('DELETE', `/api/groups/${enc(arg)}`); location.href = '/groups'; } catch (e) { formStatus(d, e.message, false); }
  });
  $('#reset')?.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const r = ev.target;
    try {
      const a = await api('POST', `/api/groups/${enc(arg)}/reset`, { topic: r.topic.value, to: r.to.value, value: r.value.value || null, execute: r.execute.checked });
      formStatus(r, a.executed ? 'offsets committed' : 'dry run: nothing committed', true);
      show('reset-result', table([['partition', (c) => c.partition, 'num'], ['current', (c) => num(c.current), 'num'], ['new', (c) => num(c.new), 'num'], ['lag after', (c) => num(c.lag_after), 'num']], a.changes));
      if (a.executed) load();
    } catch (e) { formStatus(r, e.message, false); }
  });
  await load();
  setInterval(load, 5000);
}

// ----------------------------------------------------------------------------------- schemas
async function schemas() {
  let picked = null;
  $('#compat').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const out = $('#compat-result');
    if (!picked) { out.className = 'error'; out.textContent = 'pick a subject version first'; return; }
    try {
      const c = await api('POST', `/api/schemas/${enc(picked)}/compatibility`, { schema: ev.target.schema.value });
      out.className = c.compatible ? 'ok' : 'error';
      out.textContent = c.compatible ? `compatible with ${picked}` : `not compatible with ${picked}: ${c.reasons.join('; ')}`;
    } catch (e) { out.className = 'error'; out.textContent = e.message; }
  });
  try {
    const s = await get('/api/schemas');
    show('subjects', `<p class="muted">${s.subjects.length} subjects at ${esc(s.registry)}</p>` + s.subjects.map((x) =>
      `<div class="subject"><b>${esc(x.subject)}</b>` + (x.error ? ` <span class="error">${esc(x.error)}</span>` :
        x.versions.map((v) => `<button data-s="${esc(x.subject)}" data-v="${v}">v${v}</button>`).join('')) + '</div>').join(''));
    $('#subjects').addEventListener('click', async (ev) => {
      const b = ev.target.closest('button');
      if (!b) return;
      try {
        const v = await get(`/api/schemas/${enc(b.dataset.s)}/versions/${b.dataset.v}`);
        $('#schema-title').textContent = `${v.subject} version ${v.version} (id ${v.id}, ${v.schema_type})`;
        $('#schema').textContent = typeof v.schema === 'string' ? v.schema : JSON.stringify(v.schema, null, 2);
        picked = v.subject;
      } catch (e) { $('#schema').textContent = e.message; }
    });
  } catch (e) { fail('subjects', e); }
}

// --------------------------------------------------------------------------------------- dlq
// Records per hour as bars, each hour's count stacked by error type (title on hover).
function hourBars(records) {
  const hours = {};
  for (const r of records) {
    if (!r.timestamp) continue;
    const h = Math.floor(r.timestamp / 3600000);
    (hours[h] || (hours[h] = {}))[r.headers.error_type || '-'] = ((hours[h] || {})[r.headers.error_type || '-'] || 0) + 1;
  }
  const keys = Object.keys(hours).map(Number).sort((a, b) => a - b);
  if (!keys.length) return '<p class="muted">None.</p>';
  // At least a day wide, ending with the newest hour.
  const last = keys[keys.length - 1], n = Math.max(24, last - keys[0] + 1), first = last - n + 1;
  const max = Math.max(...keys.map((h) => Object.values(hours[h]).reduce((a, b) => a + b, 0)));
  const w = 600, h = 100, bw = w / n;
  const types = [...new Set(records.map((r) => r.headers.error_type || '-'))];
  let bars = '';
  for (const k of keys) {
    let y = h;
    for (const [t, c] of Object.entries(hours[k])) {
      const bh = (c / max) * (h - 14);
      y -= bh;
      bars += `<rect x="${(k - first) * bw + 1}" y="${y}" width="${Math.max(1, bw - 2)}" height="${bh}" fill="${colors[types.indexOf(t) % colors.length]}"><title>${esc(new Date(k * 3600000).toISOString().slice(0, 13))}:00 ${esc(t)}: ${c}</title></rect>`;
    }
  }
  const legend = types.map((t, i) => `<span><svg width="10" height="10"><rect width="10" height="10" fill="${colors[i % colors.length]}"/></svg> ${esc(t)}</span>`).join(' ');
  return `<svg class="chart" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">${bars}<text x="4" y="11" font-size="10">${num(max)}</text></svg><div class="bar muted"><span>${esc(new Date(first * 3600000).toISOString().slice(0, 13).replace('T', ' '))}:00</span><span>→ ${esc(new Date(last * 3600000).toISOString().slice(0, 13).replace('T', ' '))}:00 UTC</span></div><div class="bar">${legend}</div>`;
}

async function dlq() {
  const f = $('#dlq-form');
  // The filter rides in the address (a link names what it shows); only the newest read is
  // drawn, so a slow earlier read (the page's first) never overwrites a newer one.
  const given = new URLSearchParams(location.search);
  for (const k of ['topic', 'error_type', 'source_topic']) if (given.get(k)) f[k].value = given.get(k);
  let reads = 0;
  async function load() {
    const mine = ++reads;
    const q = new URLSearchParams({ limit: '500' });
    const shown = new URLSearchParams();
    for (const k of ['topic', 'error_type', 'source_topic']) if (f[k].value) { q.set(k, f[k].value); shown.set(k, f[k].value); }
    const qs = shown.toString();
    history.replaceState(null, '', location.pathname + (qs ? '?' + qs : ''));
    show('summary', '<p class="muted">Reading the DLQ…</p>');
    try {
      const d = await get('/api/dlq?' + q);
      if (mine !== reads) return;
      const s = d.summary;
      show('summary', card(num(s.read), 'records read') + card(num(s.matched), 'matching') + card(num(s.shown), 'shown') +
        (s.older_unread ? card(num(s.older_unread), 'older, not read (the newest are counted)') : ''));
      const counts = (o) => table([['', (r) => esc(r[0])], ['records', (r) => num(r[1]), 'num']], Object.entries(o));
      show('by-type', counts(s.by_error_type));
      show('by-source', counts(s.by_source_topic));
      show('over-time', hourBars(d.records));
      show('records', table([['partition', (r) => r.partition, 'num'], ['offset', (r) => r.offset, 'num'], ['time', (r) => esc(time(r.timestamp))],
        ['error', (r) => `<b>${esc(r.headers.error_type)}</b><br>${esc(r.headers.error_message || '')}`], ['source topic', (r) => esc(r.headers.source_topic || '')],
        ['key', (r) => `<span class="key">${esc(r.key ?? '')}</span>`],
        ['value', (r) => `<span class="badge ${esc(r.value_as)}">${esc(r.value_as)}</span><pre>${esc(fmtValue(r.value, r.value_as))}</pre>`]], d.records));
    } catch (e) { if (mine === reads) { fail('summary', e); show('records', ''); } }
  }
  f.addEventListener('submit', (ev) => { ev.preventDefault(); load(); });
  $('#replay')?.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const r = ev.target;
    const body = { topic: f.topic.value || null, to: r.to.value || null, error_type: r.error_type.value || null, source_topic: r.source_topic.value || null,
      rate: r.rate.value ? Number(r.rate.value) : null, dry_run: r.dry_run.checked };
    try {
      let job = await api('POST', '/api/dlq/replay', body);
      show('replay-status', `<p class="muted">Replay ${job.id} running…</p>`);
      while (job.state === 'running') {
        await new Promise((ok) => setTimeout(ok, 500));
        job = await get(`/api/dlq/replay/${job.id}`);
        const p = job.progress;
        if (p) show('replay-status', `<p class="muted">Replay ${job.id} running: ${num(p.read)} of at most ${num(p.total)} read, ${num(p.sent)} sent…</p>`);
      }
      if (job.state === 'failed') { show('replay-status', `<p class="error">Replay ${job.id} failed: ${esc(job.error)}</p>`); return; }
      const c = job.result.replay;
      show('replay-status', `<p class="ok" id="replay-done">Replay ${job.id} ${job.request.dry_run ? '(dry run) ' : ''}done: ${c.read} read, ${c.selected} selected, ${c.sent} ${job.request.dry_run ? 'would be ' : ''}sent, ${c.sent_to_dlq} back to the DLQ, ${c.exhausted} exhausted, ${c.too_large} too large, ${c.skipped_by_filter} skipped.</p>` +
        table([['target', (x) => esc(x[0])], ['records', (x) => num(x[1]), 'num']], Object.entries(c.by_target)));
    } catch (e) { show('replay-status', `<p class="error">${esc(e.message)}</p>`); }
  });
  await load();
}

const pages = { overview, topics, topic, groups, group, schemas, dlq };
pages[page]?.();
