// Sign-in: the local gateway's dev sign-in, or a Cognito user pool's hosted UI (authorization
// code with PKCE, public client) when `/config.json` says {"auth": "cognito", "cognito": {...}}.
// The token is handed to api.ts and kept only in memory.

import { ApiError, request, setToken, type Role } from './api';
import { authorizeUrl, challengeOf, type CognitoSettings, cognitoSettings, logoutUrl, parseCallback, randomToken, tokenRequestBody } from './pkce';

export type AuthConfig = { mode: 'dev' } | { mode: 'cognito'; settings: CognitoSettings } | { mode: 'misconfigured'; reason: string };

export interface Session {
  email: string;
  role: Role;
  workspace: string;
  expiresAt?: number;
}

/** Reads `/config.json`. Missing, not JSON (the gateway's SPA fallback answers HTML) or
 *  `"auth": "dev"` all mean dev sign-in. */
export async function loadAuthConfig(): Promise<AuthConfig> {
  try {
    const response = await fetch('/config.json', { credentials: 'omit', cache: 'no-store' });
    const type = response.headers.get('Content-Type') ?? '';
    if (!response.ok || !type.includes('json')) return { mode: 'dev' };
    const json = (await response.json()) as Record<string, unknown>;
    if (json && json.auth === 'cognito') {
      const settings = cognitoSettings(json.cognito);
      return settings
        ? { mode: 'cognito', settings }
        : { mode: 'misconfigured', reason: '/config.json asks for Cognito sign-in but lacks its domain, client_id or redirect_uri.' };
    }
  } catch {
    // fall through: dev
  }
  return { mode: 'dev' };
}

export class DevSignInUnavailable extends Error {
  constructor() {
    super("Dev sign-in is off on this server. Sign-in needs the deployment's Cognito user pool.");
    this.name = 'DevSignInUnavailable';
  }
}

interface JwtClaims {
  email?: string;
  role?: string;
  workspace?: string;
  exp?: number;
  [claim: string]: unknown;
}

/** Reads (does not verify: the server does) the claims of a JWT for display and UI gating. */
export function readClaims(jwt: string): JwtClaims {
  const part = jwt.split('.')[1];
  if (!part) return {};
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)))) as JwtClaims;
  } catch {
    return {};
  }
}

export async function devSignIn(email: string, role: Role, workspace: string): Promise<Session> {
  try {
    const { data } = await request<{ token: string; expires_at?: number }>('POST', '/api/dev/login', {
      body: { email: email.trim(), role, workspace: workspace.trim() },
      auth: false,
    });
    setToken(data.token);
    return { email: email.trim(), role, workspace: workspace.trim(), expiresAt: data.expires_at };
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) throw new DevSignInUnavailable();
    throw e;
  }
}

export function signOut(): void {
  setToken(null);
}

/** Where the PKCE verifier waits while the browser visits the hosted UI: it must outlive that
 *  round trip, is worthless without the one-time code, and is removed as soon as the browser is
 *  back. Tokens themselves are never stored. */
const PKCE_KEY = 'stockpulse.pkce';

/** Sends the browser to the hosted UI. */
export async function startCognitoSignIn(settings: CognitoSettings): Promise<void> {
  const verifier = randomToken();
  const state = randomToken();
  sessionStorage.setItem(PKCE_KEY, JSON.stringify({ verifier, state }));
  window.location.assign(authorizeUrl(settings, await challengeOf(verifier), state));
}

/** Completes a sign-in the hosted UI sent back (code + state on the URL); `null` if there is none. */
export async function completeCognitoSignIn(settings: CognitoSettings): Promise<Session | null> {
  const callback = parseCallback(window.location.search);
  if (!callback) return null;
  const saved = sessionStorage.getItem(PKCE_KEY);
  sessionStorage.removeItem(PKCE_KEY);
  window.history.replaceState(null, '', window.location.pathname);
  if (callback.error) throw new Error(`Sign-in failed: ${callback.error}`);
  let pending: { verifier?: string; state?: string } = {};
  try {
    pending = saved ? (JSON.parse(saved) as typeof pending) : {};
  } catch {
    pending = {};
  }
  if (!callback.code || !pending.verifier || pending.state !== callback.state) {
    throw new Error('Sign-in failed: the answer does not belong to a sign-in started here. Sign in again.');
  }
  const response = await fetch(`${settings.domain}/oauth2/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: tokenRequestBody(settings, callback.code, pending.verifier),
    credentials: 'omit',
  });
  const tokens = (await response.json().catch(() => ({}))) as { access_token?: string };
  if (!response.ok || !tokens.access_token) throw new Error('Sign-in failed: the sign-in service refused the code. Sign in again.');
  setToken(tokens.access_token);
  const claims = readClaims(tokens.access_token);
  const groups = Array.isArray(claims['cognito:groups']) ? (claims['cognito:groups'] as string[]) : [];
  const role: Role = groups.includes('admin') ? 'admin' : groups.includes('member') ? 'member' : 'viewer';
  const email = typeof claims.email === 'string' ? claims.email : typeof claims.username === 'string' ? claims.username : '';
  const workspace = typeof claims['custom:workspace'] === 'string' ? (claims['custom:workspace'] as string) : '';
  return { email, role, workspace, expiresAt: claims.exp };
}

/** Forgets the token and ends the hosted UI's session too. */
export function cognitoSignOut(settings: CognitoSettings): void {
  setToken(null);
  window.location.assign(logoutUrl(settings));
}
