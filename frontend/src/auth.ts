// Sign-in. Today: the local gateway's dev sign-in. Later: Cognito (PKCE) when `/config.json`
// says {"auth": "cognito", ...}. The token is handed to api.ts and kept only in memory.

import { ApiError, request, setToken, type Role } from './api';

export type AuthConfig = { mode: 'dev' } | { mode: 'cognito'; settings: Record<string, unknown> };

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
    if (json && json.auth === 'cognito') return { mode: 'cognito', settings: json };
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
