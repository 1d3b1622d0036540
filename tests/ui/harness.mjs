// What the browser tests stand on: canary keys recorded for the run's canary scan, a fake
// provider on loopback, the real local gateway binary in dev mode serving frontend/dist, Debian's
// Chromium driven by Playwright, and the checks made after every step (no credential in any
// browser storage or in the DOM, every request to the page's own origin, no CSP violation).

import { spawn } from 'node:child_process';
import { createHash, createSign, generateKeyPairSync, randomUUID } from 'node:crypto';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

export const root = fileURLToPath(new URL('../..', import.meta.url));
export const artifacts = process.env.STOCKPULSE_TEST_ARTIFACTS ?? join(root, 'target', 'test-artifacts');
export const uiOut = join(artifacts, 'ui');
mkdirSync(join(artifacts, 'canaries'), { recursive: true });
mkdirSync(join(uiOut, 'screenshots'), { recursive: true });

/** A unique test credential shaped like a key (`prefix` + body), recorded for the canary scan. */
export function canary(prefix) {
  const value = `${prefix}CANARY${randomUUID().replaceAll('-', '')}`;
  appendFileSync(join(artifacts, 'canaries', `ui-${process.pid}.txt`), `${value}\n`);
  return value;
}

/**
 * A fake OpenAI-compatible provider: `GET /models` accepts the keys in `accepted` (Bearer) and
 * refuses any other with 401; `POST /chat/completions` answers with token usage.
 */
export async function fakeProvider(accepted) {
  const server = http.createServer((req, res) => {
    const auth = req.headers.authorization ?? '';
    const known = [...accepted].some((key) => auth === `Bearer ${key}`);
    const send = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    req.resume();
    req.on('end', () => {
      if (!known) return send(401, { error: { message: 'Incorrect API key provided', code: 'invalid_api_key' } });
      if (req.method === 'GET' && req.url.startsWith('/models')) return send(200, { object: 'list', data: [{ id: 'gpt-test' }] });
      if (req.method === 'POST' && req.url.startsWith('/chat/completions')) {
        return send(200, {
          id: 'chatcmpl-test',
          object: 'chat.completion',
          model: 'gpt-4o-mini',
          choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 },
        });
      }
      return send(404, { error: { message: 'not found' } });
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, accepted, close: () => new Promise((r) => server.close(r)) };
}

/** Starts `target/debug/stockpulse-local --dev` on a free loopback port; resolves its URL. */
export async function startGateway(env, staticDir = join(root, 'frontend', 'dist')) {
  const dataDir = mkdtempSync(join(tmpdir(), 'stockpulse-ui-'));
  const binary = join(root, 'target', 'debug', 'stockpulse-local');
  const child = spawn(binary, ['--dev', '--addr', '127.0.0.1:0', '--data-dir', dataDir, '--static-dir', staticDir], {
    env: { ...process.env, RUST_LOG: 'info', STOCKPULSE_LOG_FORMAT: 'json', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = join(artifacts, 'logs', `ui-gateway-${process.pid}.jsonl`);
  mkdirSync(join(artifacts, 'logs'), { recursive: true });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the gateway did not start in 60 s')), 60_000);
    let buffered = '';
    const read = (chunk) => {
      appendFileSync(log, chunk);
      buffered += chunk.toString();
      const found = buffered.match(/running at (http:\/\/127\.0\.0\.1:\d+)\//);
      if (found) {
        clearTimeout(timer);
        resolve(found[1]);
      }
    };
    child.stdout.on('data', read);
    child.stderr.on('data', read);
    child.on('exit', (code) => reject(new Error(`the gateway exited with ${code}`)));
  });
  return { url, dataDir, stop: () => new Promise((r) => { child.once('exit', r); child.kill('SIGTERM'); }) };
}

/** Debian's Chromium through Playwright (no browser download). */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.STOCKPULSE_CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
  });
}

/** Records every request the page makes and every CSP report, for `checkClean`. */
export function watch(page, origin, alsoAllowed = []) {
  const seen = { foreign: [], cspViolations: [], requests: 0 };
  const allowed = [origin, ...alsoAllowed].map((o) => `${o}/`);
  page.on('request', (request) => {
    seen.requests += 1;
    const url = request.url();
    if (!allowed.some((a) => url.startsWith(a)) && !url.startsWith('data:') && !url.startsWith('blob:')) seen.foreign.push(url);
  });
  page.on('console', (message) => {
    if (/Content Security Policy|Refused to/.test(message.text())) seen.cspViolations.push(message.text());
  });
  return seen;
}

/**
 * After a step: no credential in localStorage, sessionStorage, IndexedDB, cookies, the DOM or an
 * input's value; no request to another origin; no CSP violation. The dump is kept for the scan.
 */
export async function checkClean(page, context, seen, credentials, step) {
  const dump = await page.evaluate(async () => {
    const storage = (s) => Object.fromEntries(Array.from({ length: s.length }, (_, i) => [s.key(i), s.getItem(s.key(i))]));
    const databases = indexedDB.databases ? (await indexedDB.databases()).map((d) => d.name) : [];
    return {
      localStorage: storage(localStorage),
      sessionStorage: storage(sessionStorage),
      indexedDB: databases,
      html: document.documentElement.outerHTML,
      inputs: Array.from(document.querySelectorAll('input, textarea, select')).map((e) => e.value),
    };
  });
  dump.cookies = await context.cookies();
  writeFileSync(join(uiOut, `storage-${process.pid}-${step}.json`), JSON.stringify(dump, null, 1));
  const text = JSON.stringify(dump);
  const leaks = credentials.filter((c) => text.includes(c) || text.includes(c.split('CANARY')[1]));
  const problems = [];
  if (leaks.length) problems.push(`${step}: a credential is in the page or its storage`);
  if (Object.keys(dump.localStorage).length || Object.keys(dump.sessionStorage).length) problems.push(`${step}: web storage is used`);
  if (dump.indexedDB.length) problems.push(`${step}: IndexedDB is used`);
  if (dump.cookies.length) problems.push(`${step}: cookies are set`);
  if (seen.foreign.length) problems.push(`${step}: requests to other origins: ${seen.foreign.join(', ')}`);
  if (seen.cspViolations.length) problems.push(`${step}: CSP violations: ${seen.cspViolations.join(' | ')}`);
  return problems;
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/** axe-core in the page (evaluated through the DevTools protocol, so the page's CSP stays on). */
export async function seriousViolations(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }));
  });
  writeFileSync(join(uiOut, `axe-${name}.json`), JSON.stringify(result, null, 1));
  return result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

export async function screenshot(page, name) {
  await page.screenshot({ path: join(uiOut, 'screenshots', `${name}.png`), fullPage: true });
}

const b64url = (data) => Buffer.from(data).toString('base64url');

/**
 * A fake Cognito hosted UI and token endpoint on loopback: authorization code with PKCE (S256),
 * one-time codes, RS256 access tokens with Cognito's claims, a JWKS, and logout.
 */
export async function fakeCognito({ clientId, email, role, workspace }) {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = randomUUID();
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  const codes = new Map();
  const state = { url: '', redirectUri: '', appOrigin: '', tokensIssued: 0, refused: [] };
  const sign = (claims) => {
    const input = `${b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid }))}.${b64url(JSON.stringify(claims))}`;
    return `${input}.${createSign('RSA-SHA256').update(input).sign(privateKey).toString('base64url')}`;
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, state.url);
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      const json = (status, value) => {
        res.writeHead(status, { 'content-type': 'application/json', 'access-control-allow-origin': state.appOrigin });
        res.end(JSON.stringify(value));
      };
      if (url.pathname === '/.well-known/jwks.json') return json(200, { keys: [jwk] });
      if (url.pathname === '/oauth2/authorize') {
        const q = url.searchParams;
        if (q.get('client_id') !== clientId || q.get('redirect_uri') !== state.redirectUri || q.get('code_challenge_method') !== 'S256' || !q.get('code_challenge')) {
          state.refused.push('authorize');
          return json(400, { error: 'invalid_request' });
        }
        const code = randomUUID();
        codes.set(code, { challenge: q.get('code_challenge'), scope: q.get('scope') ?? '' });
        res.writeHead(302, { location: `${state.redirectUri}?code=${code}&state=${encodeURIComponent(q.get('state'))}` });
        return res.end();
      }
      if (url.pathname === '/oauth2/token' && req.method === 'POST') {
        const form = new URLSearchParams(body);
        const grant = codes.get(form.get('code'));
        codes.delete(form.get('code'));
        const verified = grant && createHash('sha256').update(form.get('code_verifier') ?? '').digest('base64url') === grant.challenge;
        if (form.get('grant_type') !== 'authorization_code' || form.get('client_id') !== clientId || !verified) {
          state.refused.push('token');
          return json(400, { error: 'invalid_grant' });
        }
        state.tokensIssued += 1;
        const now = Math.floor(Date.now() / 1000);
        const sub = randomUUID();
        // As Cognito: the access token names the app in client_id (no aud) and carries the granted
        // scopes; the workspace and email are there because the pre-token-generation trigger
        // (token-claims) adds them. The ID token has aud and no scope.
        const access = sign({
          sub,
          email,
          'cognito:groups': [role],
          'custom:workspace': workspace,
          iss: state.url,
          client_id: clientId,
          token_use: 'access',
          scope: grant.scope,
          iat: now,
          exp: now + 3600,
        });
        const id = sign({ sub, email, 'cognito:groups': [role], 'custom:workspace': workspace, iss: state.url, aud: clientId, token_use: 'id', iat: now, exp: now + 3600 });
        return json(200, { access_token: access, id_token: id, token_type: 'Bearer', expires_in: 3600 });
      }
      if (url.pathname === '/logout') {
        res.writeHead(302, { location: url.searchParams.get('logout_uri') });
        return res.end();
      }
      return json(404, { error: 'not_found' });
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.url = `http://127.0.0.1:${server.address().port}`;
  return { state, close: () => new Promise((r) => server.close(r)) };
}
