// Browser scenarios of `kgate ui` in real headless Chromium (Debian's `chromium`), driven by
// Playwright. Run by tests/ui.rs, which starts the UIs and prepares the data; prints one
// `ok - …` / `not ok - …` line per scenario and exits 1 if any failed.
import { chromium } from 'playwright';
import { mkdirSync } from 'node:fs';

const env = process.env;
const need = (k) => { if (!env[k]) { console.log(`not ok - setup: ${k} is not set`); process.exit(2); } return env[k]; };
const RO = need('UI_RO'), RW = need('UI_RW'), USER = need('UI_USER'), PASS = need('UI_PASS');
const TOPIC = need('UI_TOPIC'), KEY = need('UI_KEY'), EXPECT = need('UI_EXPECT'), GROUP = need('UI_GROUP');
const LAG = need('UI_LAG'), DLQ = need('UI_DLQ'), NEW_TOPIC = need('UI_NEW_TOPIC'), SUBJECT = need('UI_SUBJECT');
const OUT = need('UI_SCREENSHOTS');
mkdirSync(OUT, { recursive: true });

const browser = await chromium.launch({ executablePath: env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
let failed = 0;
async function step(name, fn) {
  try { await fn(); console.log(`ok - ${name}`); } catch (e) { failed++; console.log(`not ok - ${name}: ${String(e.message || e).split('\n').slice(0, 3).join(' | ')}`); }
}
const shot = (page, name) => page.screenshot({ path: `${OUT}/${name}.png`, fullPage: true });
const expect = (cond, what) => { if (!cond) throw new Error(what); };
const wide = { viewport: { width: 1280, height: 800 } };

async function login(base) {
  const ctx = await browser.newContext(wide);
  const page = await ctx.newPage();
  await page.goto(base + '/');
  expect(page.url().includes('/login'), `not sent to /login: ${page.url()}`);
  await page.fill('input[name=user]', USER);
  await page.fill('input[name=password]', PASS);
  await Promise.all([page.waitForURL(base + '/'), page.click('button[type=submit]')]);
  return page;
}
// A write request from inside the page, with the session cookie and its CSRF token.
const pageFetch = (page, method, path, body) => page.evaluate(async ([method, path, body]) => {
  const csrf = document.querySelector('meta[name=csrf]').content;
  const r = await fetch(path, { method, headers: { 'content-type': 'application/json', 'x-csrf-token': csrf }, body: body ? JSON.stringify(body) : undefined });
  return r.status;
}, [method, path, body]);

await step('without a session the API answers 401 and pages redirect to the login page', async () => {
  const ctx = await browser.newContext(wide);
  const r = await ctx.request.get(RO + '/api/topics');
  expect(r.status() === 401, `GET /api/topics answered ${r.status()}`);
  const page = await ctx.newPage();
  await page.goto(RO + '/topics');
  expect(new URL(page.url()).pathname === '/login', `GET /topics ended at ${page.url()}`);
  await shot(page, 'login');
  await ctx.close();
});

await step('read-only mode: no write controls, and the write endpoints answer 403', async () => {
  const page = await login(RO);
  await page.waitForSelector('text=read-only');
  for (const [path, sel] of [['/topics', '#create-topic'], [`/topics/${encodeURIComponent(TOPIC)}`, '#produce'], [`/topics/${encodeURIComponent(TOPIC)}`, '#delete-topic'], ['/dlq', '#replay']]) {
    await page.goto(RO + path);
    expect(await page.locator(sel).count() === 0, `${sel} is on ${path}`);
  }
  const a = await pageFetch(page, 'POST', '/api/topics', { name: NEW_TOPIC + '.ro' });
  const b = await pageFetch(page, 'DELETE', `/api/topics/${encodeURIComponent(TOPIC)}`);
  const c = await pageFetch(page, 'POST', '/api/dlq/replay', { topic: DLQ, dry_run: true });
  expect(a === 403 && b === 403 && c === 403, `write endpoints answered ${a}, ${b}, ${c}`);
  await shot(page, 'read-only-topic');
  await page.context().close();
});

const page = await login(RW);

await step('the overview shows the cluster', async () => {
  await page.waitForSelector('#cluster .card >> text=brokers');
  await page.waitForSelector('#brokers table');
  await shot(page, 'overview');
});

await step('write mode: create a topic from the topics page', async () => {
  await page.goto(RW + '/topics');
  await page.click('#create-topic >> xpath=ancestor::details/summary');
  await page.fill('#create-topic [name=name]', NEW_TOPIC);
  await page.fill('#create-topic [name=partitions]', '3');
  await page.fill('#create-topic [name=retention]', '2d');
  await page.click('#create-topic button[type=submit]');
  await page.waitForSelector(`#create-topic .status.ok >> text=created ${NEW_TOPIC}`);
  await page.fill('#search', NEW_TOPIC);
  await page.waitForSelector(`#topics a >> text=${NEW_TOPIC}`);
  const row = await page.locator('#topics tbody tr').first().innerText();
  expect(row.includes('3') && row.includes('2d'), `row: ${row}`);
  await shot(page, 'topics');
});

await step('find an Avro record by key in the message browser, decoded', async () => {
  await page.goto(RW + `/topics/${encodeURIComponent(TOPIC)}`);
  await page.waitForSelector('#partitions table');
  await page.waitForSelector('#messages table');
  await page.selectOption('#browse [name=from]', 'start');
  await page.fill('#browse [name=key]', KEY);
  await page.click('#browse button[type=submit]');
  await page.waitForSelector(`#messages .key >> text=${KEY}`);
  const rows = page.locator('#messages tbody tr');
  expect(await rows.count() === 1, `${await rows.count()} rows for key ${KEY}`);
  const text = await rows.first().innerText();
  expect(text.includes('avro'), `not decoded as avro: ${text}`);
  expect(text.includes(EXPECT), `decoded value lacks ${EXPECT}: ${text}`);
  await shot(page, 'messages');
});

await step("a consumer group's lag per partition", async () => {
  await page.goto(RW + '/groups');
  await page.fill('#search', GROUP);
  await page.waitForSelector(`#groups a >> text=${GROUP}`);
  await shot(page, 'groups');
  await page.goto(RW + `/groups/${encodeURIComponent(GROUP)}`);
  await page.waitForSelector('#partitions table');
  const card = await page.locator('#summary').innerText();
  expect(card.includes(`${LAG}\ntotal lag`) || card.includes(`${LAG} total lag`), `summary: ${card}`);
  // Lag over time: drawn from the first look (a dot), then a line once the sampler (every
  // 1 s in the test) has added samples; its top label is the lag.
  // (A flat line has no height, so `attached`, not `visible`.)
  await page.waitForSelector('#chart svg#lag-chart circle, #chart svg#lag-chart polyline', { state: 'attached' });
  await page.waitForSelector('#chart svg#lag-chart polyline', { state: 'attached', timeout: 30000 });
  const points = (await page.locator('#chart svg#lag-chart polyline').first().getAttribute('points')).trim().split(/\s+/).length;
  expect(points >= 2, `the line has ${points} points`);
  const top = await page.locator('#chart svg#lag-chart text').first().textContent();
  expect(top === LAG, `the chart's top is ${top}, not ${LAG}`);
  await shot(page, 'group');
});

await step('live tail shows a record produced while it runs', async () => {
  await page.goto(RW + `/topics/${encodeURIComponent(TOPIC)}`);
  await page.waitForSelector('#messages table');
  await page.check('#browse [name=tail]');
  await page.waitForSelector('#page-info >> text=live:');
  const st = await pageFetch(page, 'POST', `/api/topics/${encodeURIComponent(TOPIC)}/messages`,
    { key: 'tail-1', value: { device: 'tail-1', temp: 1.5, seq: 99 }, format: 'avro', subject: SUBJECT });
  expect(st === 200, `produce answered ${st}`);
  await page.waitForSelector('#messages .key >> text=tail-1');
  const first = await page.locator('#messages tbody tr').first().innerText();
  expect(first.includes('tail-1') && first.includes('avro'), `newest row: ${first}`);
  await page.uncheck('#browse [name=tail]');
});

if (env.UI_RUN) {
  await step('inside kgate run the overview counts the pipeline\'s records', async () => {
    const ctx = await browser.newContext(wide);
    const p = await ctx.newPage();
    await p.goto(env.UI_RUN + '/');
    await p.waitForSelector(`#totals .card >> text=${env.UI_RUN_PUBLISHED}`);
    const totals = await p.locator('#totals').innerText();
    expect(totals.includes('published to Kafka'), totals);
    await p.waitForSelector('#pipelines h3 >> text=By topic');
    const byTopic = await p.locator('#pipelines table').filter({ hasText: env.UI_RUN_TOPIC }).first().innerText();
    expect(byTopic.includes(env.UI_RUN_TOPIC) && byTopic.includes('mean ack ms'), byTopic);
    // Per pipeline: in and out counted, the feed connected, the accept → ack latency, and
    // the rates drawn once two polls have given rates (the page polls every 2 s).
    const N = env.UI_RUN_PUBLISHED;
    const row = p.locator('#run table').first().locator('tbody tr').filter({ hasText: 'trades' });
    await row.locator('svg.spark polyline').first().waitFor({ state: 'attached', timeout: 30000 });
    const cells = await row.locator('td').allInnerTexts();
    expect(cells[1].includes('connected'), `sources: ${cells[1]}`);
    expect(cells[2].startsWith(N) && cells[3].startsWith(N) && cells[4].startsWith('0'), `in, out, dead-lettered: ${cells.slice(2, 5)}`);
    expect(/^\d+(\.\d+)? \/ \d+(\.\d+)?$/.test(cells[5].trim()), `latency p50 / p99: ${cells[5]}`);
    expect(await row.locator('svg.spark polyline').count() === 2, 'an in and an out line');
    const src = await p.locator('#run table').nth(1).innerText();
    expect(src.includes('connected') && src.includes(N), `by source: ${src}`);
    expect((await p.locator('#buffer-fill').innerText()) === '0.0%', 'the buffer is empty once all is acked');
    await shot(p, 'overview-run');
    await ctx.close();
  });
}

await step('schemas: a subject version pretty-printed, a pasted schema checked', async () => {
  await page.goto(RW + '/schemas');
  await page.click(`button[data-s="${SUBJECT}"]`);
  await page.waitForFunction(() => document.querySelector('#schema').textContent.includes('"type": "record"'));
  const title = await page.locator('#schema-title').innerText();
  expect(title.startsWith(`${SUBJECT} version 1`), `title: ${title}`);
  // The compatibility check of a pasted schema: the version itself is compatible.
  await page.fill('#compat [name=schema]', await page.locator('#schema').innerText());
  await page.click('#compat button[type=submit]');
  await page.waitForSelector(`#compat-result.ok >> text=compatible with ${SUBJECT}`);
  await shot(page, 'schemas');
});

await step('replay a DLQ record to its source topic', async () => {
  await page.goto(RW + '/dlq');
  await page.fill('#dlq-form [name=topic]', DLQ);
  await page.click('#dlq-form button[type=submit]');
  try {
    await page.waitForSelector('#records tbody tr', { timeout: 60000 });
  } catch (e) {
    throw new Error(`no DLQ record shown; the page said: ${(await page.locator("main").innerText()).replace(/\s*\n\s*/g, " / ")}`);
  }
  expect(new URL(page.url()).searchParams.get('topic') === DLQ, `the address names the topic: ${page.url()}`);
  expect(await page.locator('#over-time svg.chart rect').count() === 1, 'one bar for the one record');
  await page.uncheck('#replay [name=dry_run]');
  await page.click('#replay button[type=submit]');
  await page.waitForSelector('#replay-done', { timeout: 60000 });
  const done = await page.locator('#replay-done').innerText();
  expect(done.includes('1 sent'), `replay: ${done}`);
  await shot(page, 'dlq');
});

await browser.close();
console.log(failed ? `${failed} scenario(s) failed` : 'all scenarios passed');
process.exit(failed ? 1 : 0);
