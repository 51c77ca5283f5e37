// Drives the gateway's console page in headless Chromium (Debian's
// `chromium`, through playwright-core) to check the copilot JS client:
// 1008 -> login, 4001 -> token refresh, a query whose callbacks the page
// answers, pongs, reconnection with backoff across a gateway restart, and
// giving up after the configured number of tries. Started by
// tests/integration/copilot_browser.rs, which owns the mesh: this script
// prints `STOP` / `START` when the gateway must go down / come back, and
// waits for the test to answer `ok` on stdin.
//
// env: GATEWAY (http://127.0.0.1:PORT), TOKEN (valid), EXPIRED_TOKEN,
//      PLAYWRIGHT_DIR (where node_modules/playwright-core is), CHROMIUM.
'use strict';
const path = require('node:path');
const readline = require('node:readline');
const assert = require('node:assert/strict');

const { chromium } = require(path.join(process.env.PLAYWRIGHT_DIR, 'node_modules', 'playwright-core'));
const { GATEWAY, TOKEN, EXPIRED_TOKEN } = process.env;
const TRIES = 10;
const WAIT = { timeout: 15000 };

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(what) {
  console.log(what);
  const { value } = await lines.next();
  assert.equal(value, 'ok', `test answered ${value} to ${what}`);
}
const step = (s) => console.error(`browser: ${s}`);

// Waits for a state after index `from` in window.copilotStates matching `want`.
async function waitState(page, from, want) {
  await page.waitForFunction(
    ([from, want]) => window.copilotStates.slice(from).some((s) => Object.entries(want).every(([k, v]) => s[k] === v)),
    [from, want], WAIT);
}
// Asks the console's query (scenario basic) and waits for the `n`-th
// query outcome. With a query service (issue 10) the chain must complete:
// both callbacks reach the page, its answers go back, and the response
// reports the cache hit. A mesh without one answers the query with its
// "not implemented" UNAVAILABLE error frame, and nothing else is accepted.
async function askQuery(page, n) {
  await page.click('#copilot-ask');
  await page.waitForFunction((n) => (document.getElementById('copilot-log').textContent
    .match(/^(= response|< \{"type":"error")/gm) || []).length >= n, n, WAIT);
  const log = await logText(page);
  const last = log.split('\n').filter((l) => /^(= response|< \{"type":"error")/.test(l)).pop();
  if (last.startsWith('< {"type":"error"')) {
    assert.match(last, /"code":"UNAVAILABLE".*not implemented/, 'only a missing query service may refuse');
    step('(this mesh has no query service: the query got UNAVAILABLE)');
    return;
  }
  assert.match(last, /"cache":"hit"/);
  // Key order in a JSON object carries no meaning: look for the type anywhere in a received frame.
  assert.equal((log.match(/^< .*"type":"request_available_data"/gm) || []).length, n);
  assert.equal((log.match(/^< .*"type":"request_api"/gm) || []).length, n);
}
const states = (page) => page.evaluate(() => window.copilotStates);
const logText = (page) => page.textContent('#copilot-log');

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => step(`page error: ${e}`));
    await page.goto(`${GATEWAY}/?backoff=50,400,${TRIES}`);

    step('the module is served as JavaScript and the console uses it');
    const js = await page.evaluate(async () => (await fetch('/copilot-client.js')).headers.get('content-type'));
    assert.match(js, /javascript/);
    await page.waitForFunction(() => !!window.copilot, null, WAIT);

    step('callbacks answered with the server requestId (fake socket, unit level)');
    const fake = await page.evaluate(async () => {
      const { CopilotClient } = await import('/copilot-client.js');
      const sent = [];
      class FakeSocket {
        constructor(url) { this.url = url; this.readyState = 0; FakeSocket.last = this;
          setTimeout(() => { this.readyState = 1; this.onmessage({ data: '{"type":"connected","userId":"u","connectionId":"c"}' }); }, 0); }
        send(t) { sent.push(JSON.parse(t)); }
        close() {}
      }
      const c = new CopilotClient({ url: 'ws://fake/ws/copilot', getToken: () => 'tok', WebSocket: FakeSocket,
        handlers: { request_available_data: (d) => [d.query], request_api: async (d) => ({ api: d.api }) } });
      c.handle('clarification_request', () => 'yes');
      c.connect();
      await new Promise((r) => setTimeout(r, 20));
      const srv = (f) => FakeSocket.last.onmessage({ data: JSON.stringify(f) });
      srv({ type: 'request_available_data', requestId: 'r1', data: { query: 'q' } });
      srv({ type: 'request_api', requestId: 'r2', data: { api: 'cost' } });
      srv({ type: 'clarification_request', requestId: 'r3', data: { question: '?' } });
      srv({ type: 'ping', timestamp: 1 });
      const q = c.query({ question: 'x' });
      await new Promise((r) => setTimeout(r, 20));
      srv({ type: 'response', requestId: sent.find((f) => f.type === 'query').requestId, data: { ok: 1 } });
      const answer = await q;
      return { url: FakeSocket.last.url, sent, answer: answer.data };
    });
    assert.equal(fake.url, 'ws://fake/ws/copilot?token=tok');
    // Handlers may be async: answers go out as each one settles.
    const byType = (a, b) => a.type.localeCompare(b.type);
    assert.deepEqual(fake.sent.filter((f) => f.type !== 'query').sort(byType), [
      { type: 'api_result', requestId: 'r2', data: { api: 'cost' } },
      { type: 'available_data', requestId: 'r1', data: ['q'] },
      { type: 'human_response', requestId: 'r3', data: 'yes' },
      { type: 'pong' },
    ]);
    assert.deepEqual(fake.answer, { ok: 1 });

    step('no token: 1008 stops and asks for a login');
    let from = (await states(page)).length;
    await page.click('#copilot-connect');
    await waitState(page, from, { state: 'stopped', code: 1008 });
    assert.match(await logText(page), /\[login required\]/);

    step('an expired token: 4001, the token is refreshed, then it connects');
    from = (await states(page)).length;
    await page.fill('#copilot-token', EXPIRED_TOKEN);
    await page.click('#copilot-connect');
    await waitState(page, from, { state: 'closed', code: 4001 });
    await page.fill('#copilot-token', TOKEN);
    await waitState(page, from, { state: 'open' });
    assert.match(await logText(page), /token refused: re-reading the token field/);

    step('pings are answered: the socket outlives several heartbeat periods');
    from = (await states(page)).length;
    await page.waitForTimeout(1500);
    assert.deepEqual((await states(page)).slice(from), [], 'no close while idle');

    step('a query whose callbacks the page answers');
    await askQuery(page, 1);

    step('the gateway restarts: the page reconnects with backoff');
    from = (await states(page)).length;
    await ask('STOP');
    await waitState(page, from, { state: 'retrying', attempt: 2 });
    await ask('START');
    await waitState(page, from, { state: 'open' });
    const restart = (await states(page)).slice(from).filter((s) => s.state === 'retrying');
    assert.deepEqual(restart.slice(0, 2).map((s) => s.delayMs), [50, 100], 'delays double');
    await askQuery(page, 2);

    step(`the gateway stays down: ${TRIES} tries, then the page gives up`);
    from = (await states(page)).length;
    await ask('STOP');
    await waitState(page, from, { state: 'stopped' });
    const after = (await states(page)).slice(from);
    const retries = after.filter((s) => s.state === 'retrying');
    assert.deepEqual(retries.map((s) => s.attempt), [...Array(TRIES).keys()].map((i) => i + 1));
    assert.deepEqual(retries.map((s) => s.delayMs), [50, 100, 200, 400, 400, 400, 400, 400, 400, 400]);
    assert.equal(after.filter((s) => s.state === 'connecting').length, TRIES);
    assert.match(after[after.length - 1].reason, /gave up after 10 tries/);
    await page.waitForTimeout(1000);
    assert.equal((await states(page)).length, from + after.length, 'nothing happens after giving up');
  } finally {
    await browser.close();
  }
  console.log('DONE');
  process.exit(0); // stdin stays open: the test owns it
})().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  console.log('FAILED');
  process.exit(1);
});
