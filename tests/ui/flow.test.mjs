// The web UI in Debian's Chromium, against the real gateway binary (dev mode, embedded storage)
// and a fake OpenAI on loopback: sign in; add a key that gets a format warning, test it, "Save
// and Add Another"; see the masked key and status; edit, rotate, revoke, delete; see the usage
// charts with data and the audit entries. After every step: no credential in any browser storage
// or in the DOM, every request to the page's own origin, no CSP violation. axe-core finds no
// serious or critical violation on the main page and in the modal. Screenshots are kept.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { canary, checkClean, fakeCognito, fakeProvider, launch, root, screenshot, seriousViolations, startGateway, uiOut, watch } from './harness.mjs';

const warned = canary('ui-'); // not an OpenAI shape: saved with a format warning
const second = canary('sk-proj-');
const rotated = canary('sk-proj-');
const credentials = [warned, second, rotated];
const workspace = `ws-ui-${Date.now()}`;

let provider;
let gateway;
let browser;

before(async () => {
  provider = await fakeProvider(new Set(credentials));
  gateway = await startGateway({ STOCKPULSE_UPSTREAM_OPENAI: provider.url, STOCKPULSE_SCHEDULER_INTERVAL_SECONDS: '0' });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  await provider?.close();
});

/** Proxied chat calls with the workspace's key, so that the usage charts have data. */
async function proxyTraffic(count) {
  const login = await fetch(`${gateway.url}/api/dev/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: 'bot@ui.example.com', role: 'viewer', workspace }),
  });
  const { token } = await login.json();
  for (let i = 0; i < count; i += 1) {
    const answer = await fetch(`${gateway.url}/proxy/openai/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `hi ${i}` }] }),
    });
    assert.equal(answer.status, 200, await answer.text());
  }
}

test('a member of staff manages a key from sign-in to deletion', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const seen = watch(page, gateway.url);
  const problems = [];
  const clean = async (step) => problems.push(...(await checkClean(page, context, seen, credentials, step)));

  // Sign in (dev mode).
  await page.goto(`${gateway.url}/`);
  await page.getByLabel('Email').fill('ana@ui.example.com');
  await page.getByLabel('Role').selectOption('admin');
  await page.getByLabel('Workspace').fill(workspace);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'API Key Management' }).waitFor();
  await clean('signed-in');

  // The LLM providers, OpenAI's add dialog.
  await page.getByRole('tab', { name: 'LLM Providers' }).click();
  const openai = page.getByRole('region', { name: 'OpenAI' });
  await openai.getByRole('button', { name: 'Add key for OpenAI' }).click();
  const dialog = page.getByRole('dialog', { name: 'Add key: OpenAI' });
  await dialog.waitFor();
  await screenshot(page, 'modal');
  assert.deepEqual(await seriousViolations(page, 'modal'), [], 'axe: the modal');
  const save = dialog.getByRole('button', { name: 'Save', exact: true });
  assert.equal(await save.isDisabled(), true, 'Save is disabled until the required fields are valid');

  // A key that does not look like OpenAI's: a warning, not an error.
  await dialog.getByLabel('API Key').fill(warned);
  await dialog.getByText('usually starts with').first().waitFor();
  assert.equal(await save.isDisabled(), false, 'a warning does not block saving');
  await dialog.getByRole('button', { name: 'Test Connection' }).click();
  await dialog.getByText('Connection works').waitFor();

  // Save and Add Another: the form is cleared and the next environment offered.
  await dialog.getByRole('button', { name: 'Save and Add Another' }).click();
  await dialog.getByText('Saved with warnings').waitFor();
  assert.equal(await dialog.getByLabel('API Key').inputValue(), '', 'the typed key is cleared after saving');
  await clean('saved-first');
  assert.equal(await dialog.getByLabel('Environment').inputValue(), 'development');
  await dialog.getByLabel('API Key').fill(second);
  await save.click();
  await dialog.waitFor({ state: 'hidden' });
  await clean('saved-second');

  // The masked keys and their status.
  const production = openai.getByRole('group', { name: 'OpenAI Production' });
  const development = openai.getByRole('group', { name: 'OpenAI Development' });
  await production.getByText(`****${warned.slice(-4)}`).first().waitFor();
  await development.getByText(`****${second.slice(-4)}`).first().waitFor();
  assert.match(await openai.innerText(), /Active/);
  await screenshot(page, 'main');
  assert.deepEqual(await seriousViolations(page, 'main'), [], 'axe: the main page');

  // Edit the label and the rotation policy.
  await production.getByRole('button', { name: 'Edit OpenAI Production key' }).click();
  const edit = page.getByRole('dialog', { name: 'Edit key: OpenAI' });
  await edit.getByLabel('Label').fill('Research team');
  // A rotation policy: the card then shows when the rotation is due.
  await edit.getByLabel('Rotate every (days)').fill('0');
  await edit.getByText('whole number from 1').waitFor();
  assert.equal(await edit.getByRole('button', { name: 'Save', exact: true }).isDisabled(), true, 'a bad policy blocks saving');
  await edit.getByLabel('Rotate every (days)').fill('90');
  await edit.getByRole('button', { name: 'Save', exact: true }).click();
  await edit.waitFor({ state: 'hidden' });
  await production.getByText('Research team').waitFor();
  await production.getByText('Rotation due').waitFor();
  await clean('edited');

  // Rotate to a new key: tested, promoted, the old one kept for a rollback.
  await production.getByRole('button', { name: 'Rotate OpenAI Production key' }).click();
  const rotate = page.getByRole('dialog', { name: 'Rotate key: OpenAI' });
  await rotate.getByLabel('API Key').fill(rotated);
  await rotate.getByRole('button', { name: 'Rotate', exact: true }).click();
  await rotate.waitFor({ state: 'hidden' });
  await production.getByText(`****${rotated.slice(-4)}`).first().waitFor();
  await production.getByRole('button', { name: 'Roll back OpenAI Production key' }).waitFor();
  await clean('rotated');

  // Usage charts with data.
  await proxyTraffic(5);
  await page.getByRole('tab', { name: 'Usage & quotas' }).click();
  const usageProvider = page.getByLabel('Provider');
  if (await usageProvider.count()) await usageProvider.first().selectOption('openai');
  // Today's bar of the requests chart has a height; the days before have none.
  await page.locator('svg rect.bar:not([height="0"])').first().waitFor();
  await screenshot(page, 'usage');
  await clean('usage');

  // Revoke the development key, with a reason.
  await page.getByRole('tab', { name: 'Keys' }).click();
  await page.getByRole('tab', { name: 'LLM Providers' }).click();
  await development.getByRole('button', { name: 'Revoke OpenAI Development key' }).click();
  const revoke = page.getByRole('alertdialog', { name: 'Revoke OpenAI Development key' });
  await revoke.getByLabel('Reason (required)').fill('left in a notebook');
  await revoke.getByRole('button', { name: 'Revoke key' }).click();
  await revoke.waitFor({ state: 'hidden' });
  await development.getByText('left in a notebook').waitFor();
  await clean('revoked');

  // Delete the production key, after a confirmation.
  await production.getByRole('button', { name: 'Delete OpenAI Production key' }).click();
  const confirm = page.getByRole('alertdialog', { name: 'Delete OpenAI Production key?' });
  await confirm.getByRole('button', { name: 'Delete key' }).click();
  await confirm.waitFor({ state: 'hidden' });
  await production.getByText(`****${rotated.slice(-4)}`).waitFor({ state: 'detached' });
  await clean('deleted');

  // The audit entries of all of it.
  await page.getByRole('tab', { name: 'Audit log' }).click();
  const entries = page.getByRole('region', { name: 'Audit entries' });
  await entries.getByText('key.delete').first().waitFor();
  const audit = await entries.innerText();
  for (const action of ['key.create', 'key.test_candidate', 'key.update', 'key.rotate.promote', 'key.revoke', 'key.delete']) {
    assert.ok(audit.includes(action), `the audit view lists ${action}`);
  }
  await clean('audit');

  assert.ok(seen.requests > 10, 'the page talked to the API');
  assert.deepEqual(problems, []);
  await context.close();
});

test('the page works at 375 px wide with the keyboard alone', async () => {
  const context = await browser.newContext({ viewport: { width: 375, height: 812 } });
  const page = await context.newPage();
  const seen = watch(page, gateway.url);
  await page.goto(`${gateway.url}/`);
  await page.getByLabel('Email').focus();
  await page.keyboard.type('kim@ui.example.com');
  await page.getByLabel('Workspace').focus();
  await page.keyboard.press('Control+A');
  await page.keyboard.type(`${workspace}-mobile`);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'API Key Management' }).waitFor();
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 375, `no horizontal scrolling at 375 px (content is ${width} px wide)`);
  // The modal traps focus and gives it back.
  await page.getByRole('tab', { name: 'LLM Providers' }).click();
  const add = page.getByRole('button', { name: 'Add key for OpenAI' });
  await add.focus();
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: 'Add key: OpenAI' });
  await dialog.waitFor();
  for (let i = 0; i < 25; i += 1) {
    await page.keyboard.press('Tab');
    assert.ok(await page.evaluate(() => !!document.activeElement?.closest('[role="dialog"]')), 'focus stays in the modal');
  }
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('aria-label') ?? document.activeElement?.textContent), await add.evaluate((b) => b.getAttribute('aria-label') ?? b.textContent), 'focus returns to the button that opened the modal');
  // Add a key with the keyboard alone: open, type, Tab to Save, Enter.
  const typed = canary('sk-proj-');
  credentials.push(typed);
  await page.keyboard.press('Enter');
  await dialog.waitFor();
  await dialog.getByLabel('API Key').focus();
  await page.keyboard.type(typed);
  let onSave = false;
  for (let i = 0; i < 30 && !onSave; i += 1) {
    await page.keyboard.press('Tab');
    onSave = await page.evaluate(() => document.activeElement?.tagName === 'BUTTON' && document.activeElement.textContent?.trim() === 'Save');
  }
  assert.ok(onSave, 'Save is reachable with Tab');
  await page.keyboard.press('Enter');
  await dialog.waitFor({ state: 'hidden' });
  await page.getByRole('group', { name: 'OpenAI Production' }).getByText(`****${typed.slice(-4)}`).first().waitFor();
  await screenshot(page, 'main-375');
  assert.deepEqual(await checkClean(page, context, seen, credentials, 'mobile'), []);
  await context.close();
});

test('the user guide is a set of pages of the site, linked from the page', async () => {
  const context = await browser.newContext({ viewport: { width: 1024, height: 800 } });
  const page = await context.newPage();
  const seen = watch(page, gateway.url);
  await page.goto(`${gateway.url}/`);
  await page.getByLabel('Email').fill('lee@ui.example.com');
  await page.getByLabel('Workspace').fill(`${workspace}-docs`);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('link', { name: 'User guide' }).click();
  await page.waitForURL(/\/docs\/index\.html$/);
  for (const [link, heading] of [
    [/obtain/i, /obtain/i],
    [/troubleshoot/i, /troubleshoot/i],
  ]) {
    await page.goto(`${gateway.url}/docs/index.html`);
    await page.getByRole('link', { name: link }).first().click();
    await page.getByRole('heading', { name: heading }).first().waitFor();
  }
  await screenshot(page, 'user-guide');
  assert.deepEqual(await checkClean(page, context, seen, credentials, 'docs'), []);
  await context.close();
});

test('with a Cognito configuration the page signs in through the hosted UI with PKCE and keeps the token in memory', async () => {
  const clientId = 'stockpulse-web';
  const cognito = await fakeCognito({ clientId, email: 'ops@ui.example.com', role: 'admin', workspace: `${workspace}-cognito` });
  const site = mkdtempSync(join(tmpdir(), 'stockpulse-ui-site-'));
  cpSync(join(root, 'frontend', 'dist'), site, { recursive: true });
  const sso = await startGateway(
    {
      STOCKPULSE_JWKS_URL: `${cognito.state.url}/.well-known/jwks.json`,
      STOCKPULSE_JWT_ISSUER: cognito.state.url,
      STOCKPULSE_JWT_AUDIENCE: clientId,
      // As the deployment's routes: ID tokens (no scope) are refused.
      STOCKPULSE_JWT_SCOPE: 'stockpulse-keys/api',
      STOCKPULSE_UI_CONNECT_SRC: cognito.state.url,
    },
    site,
  );
  cognito.state.redirectUri = `${sso.url}/`;
  cognito.state.appOrigin = sso.url;
  writeFileSync(join(site, 'config.json'), JSON.stringify({ auth: 'cognito', cognito: { domain: cognito.state.url, client_id: clientId, redirect_uri: `${sso.url}/`, logout_uri: `${sso.url}/`, scopes: ['openid', 'email', 'stockpulse-keys/api'] } }));
  const context = await browser.newContext();
  const page = await context.newPage();
  const seen = watch(page, sso.url, [cognito.state.url]);
  try {
    await page.goto(`${sso.url}/`);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'API Key Management' }).waitFor();
    await page.getByText('ops@ui.example.com').first().waitFor();
    await page.getByRole('tab', { name: 'LLM Providers' }).click();
    await page.getByRole('region', { name: 'OpenAI' }).waitFor();
    assert.equal(cognito.state.tokensIssued, 1);
    assert.deepEqual(cognito.state.refused, []);
    assert.equal(new URL(page.url()).search, '', 'the code is removed from the address bar');
    assert.deepEqual(await checkClean(page, context, seen, credentials, 'cognito'), [], 'no token or verifier left in any storage');
    // Sign out ends the hosted UI's session and comes back to the sign-in page.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('button', { name: 'Sign in' }).waitFor();
    // Going back to an old callback URL does not sign anyone in: the code was used.
    await page.goto(`${sso.url}/?code=replayed&state=forged`);
    await page.getByRole('alert').filter({ hasText: 'Sign-in failed' }).waitFor();
  } finally {
    await context.close();
    await sso.stop();
    await cognito.close();
  }
});

/** A dev token of the workspace, for set-up through the API. */
async function apiToken(email, role, ws) {
  const login = await fetch(`${gateway.url}/api/dev/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email, role, workspace: ws }),
  });
  return (await login.json()).token;
}

async function call(token, method, path, body) {
  const answer = await fetch(`${gateway.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: answer.status, json: await answer.json().catch(() => null) };
}

test('quota bars show 80 % and 100 %, a stored key is tested and rolled back, and the audit log exports to CSV', async () => {
  const ws = `${workspace}-quota`;
  const original = canary('sk-proj-');
  const next = canary('sk-proj-');
  provider.accepted.add(original);
  provider.accepted.add(next);
  credentials.push(original, next);
  const admin = await apiToken('set-up@ui.example.com', 'admin', ws);
  assert.equal((await call(admin, 'POST', '/api/keys', { provider: 'openai', credentials: { api_key: original } })).status, 201);
  assert.equal((await call(admin, 'PUT', '/api/quotas/openai', { environment: 'production', limits: { requests_per_day: 5 } })).status, 200);
  const chat = async (n) => {
    for (let i = 0; i < n; i += 1) await call(admin, 'POST', '/proxy/openai/chat/completions', { model: 'gpt-4o-mini', messages: [] });
  };
  await chat(4);

  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  const seen = watch(page, gateway.url);
  await page.goto(`${gateway.url}/`);
  await page.getByLabel('Email').fill('ana@ui.example.com');
  await page.getByLabel('Workspace').fill(ws);
  await page.getByRole('button', { name: 'Sign in' }).click();

  await page.getByRole('tab', { name: 'Usage & quotas' }).click();
  await page.getByLabel('Provider').first().selectOption('openai');
  await page.getByRole('img', { name: /Requests today.*Warning: 80% or more used/ }).waitFor();
  await chat(1);
  // Switching the provider away and back reloads the view.
  await page.getByLabel('Provider').first().selectOption('anthropic');
  await page.getByLabel('Provider').first().selectOption('openai');
  await page.getByRole('img', { name: /Requests today.*Limit reached/ }).waitFor();
  await page.getByRole('tab', { name: 'Notifications' }).click();
  const markRead = page.getByRole('button', { name: /^Mark as read: .*80/ });
  await markRead.first().click();
  await markRead.first().waitFor({ state: 'detached' });
  assert.ok(await page.getByRole('button', { name: /^Mark as read: / }).count() >= 1, 'the 100 % notification is still unread');

  // Test the stored key from its card, rotate it and roll the rotation back.
  await page.getByRole('tab', { name: 'Keys' }).click();
  await page.getByRole('tab', { name: 'LLM Providers' }).click();
  const production = page.getByRole('region', { name: 'OpenAI' }).getByRole('group', { name: 'OpenAI Production' });
  await production.getByRole('button', { name: 'Test OpenAI Production key' }).click();
  await page.getByText('Connection works').first().waitFor();
  await production.getByRole('button', { name: 'Rotate OpenAI Production key' }).click();
  const rotate = page.getByRole('dialog', { name: 'Rotate key: OpenAI' });
  await rotate.getByLabel('API Key').fill(next);
  await rotate.getByRole('button', { name: 'Rotate', exact: true }).click();
  await rotate.waitFor({ state: 'hidden' });
  await production.getByText(`****${next.slice(-4)}`).first().waitFor();
  await production.getByRole('button', { name: 'Roll back OpenAI Production key' }).click();
  const confirmRollback = page.getByRole('alertdialog');
  if (await confirmRollback.count()) await confirmRollback.getByRole('button', { name: /roll back/i }).click();
  await production.getByText(`****${original.slice(-4)}`).first().waitFor();
  const problems = await checkClean(page, context, seen, credentials, 'rolled-back');

  // The audit log, exported as CSV.
  await page.getByRole('tab', { name: 'Audit log' }).click();
  await page.getByRole('region', { name: 'Audit entries' }).getByText('key.rollback').first().waitFor();
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export CSV' }).click()]);
  const csv = readFileSync(await download.path(), 'utf8');
  writeFileSync(join(uiOut, `audit-export-${process.pid}.csv`), csv);
  const lines = csv.trim().split(/\r?\n/);
  assert.match(lines[0], /action/);
  for (const action of ['key.create', 'quota.update', 'quota.threshold', 'key.rotate.promote', 'key.rollback']) {
    assert.ok(csv.includes(action), `the CSV has ${action}`);
  }
  assert.ok(!credentials.some((c) => csv.includes(c)), 'no credential in the export');
  assert.deepEqual([...problems, ...(await checkClean(page, context, seen, credentials, 'exported'))], []);
  await context.close();
});
