// OAuth 2.0 authorization code flow with PKCE (RFC 7636) against a Cognito user pool's hosted UI,
// as a public client: no client secret, the code is bound to a verifier only this tab knows.

export interface CognitoSettings {
  /** The hosted UI's base URL, e.g. `https://stockpulse.auth.eu-west-1.amazoncognito.com`. */
  domain: string;
  client_id: string;
  /** Where the hosted UI sends the browser back (this page's URL, registered on the app client). */
  redirect_uri: string;
  /** Where the hosted UI sends the browser after sign-out (registered on the app client). */
  logout_uri?: string;
  scopes?: string[];
}

/** Checks a `/config.json` `cognito` object; `null` if it lacks what the flow needs. */
export function cognitoSettings(value: unknown): CognitoSettings | null {
  if (!value || typeof value !== 'object') return null;
  const v = value as Record<string, unknown>;
  const text = (k: string) => (typeof v[k] === 'string' && (v[k] as string).length > 0 ? (v[k] as string) : null);
  const domain = text('domain');
  const clientId = text('client_id');
  const redirect = text('redirect_uri');
  if (!domain || !clientId || !redirect || !/^https:\/\/|^http:\/\/(127\.0\.0\.1|localhost)(:\d+)?/.test(domain)) return null;
  const scopes = Array.isArray(v.scopes) && v.scopes.every((s) => typeof s === 'string') ? (v.scopes as string[]) : undefined;
  return { domain: domain.replace(/\/+$/, ''), client_id: clientId, redirect_uri: redirect, logout_uri: text('logout_uri') ?? undefined, scopes };
}

export function base64Url(bytes: Uint8Array): string {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** A fresh random value of 32 bytes, base64url (43 characters): verifier and state. */
export function randomToken(): string {
  return base64Url(crypto.getRandomValues(new Uint8Array(32)));
}

/** `code_challenge` = base64url(SHA-256(verifier)) (method S256). */
export async function challengeOf(verifier: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  return base64Url(new Uint8Array(digest));
}

/** The deployment's routes require `stockpulse-keys/api` (template.yaml, ApiResourceServer): an
 * access token without it is refused, and so is any ID token. */
export const DEFAULT_SCOPES = ['openid', 'email', 'stockpulse-keys/api'];

export function authorizeUrl(settings: CognitoSettings, challenge: string, state: string): string {
  const params = new URLSearchParams({
    response_type: 'code',
    client_id: settings.client_id,
    redirect_uri: settings.redirect_uri,
    scope: (settings.scopes ?? DEFAULT_SCOPES).join(' '),
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });
  return `${settings.domain}/oauth2/authorize?${params.toString()}`;
}

export function tokenRequestBody(settings: CognitoSettings, code: string, verifier: string): URLSearchParams {
  return new URLSearchParams({
    grant_type: 'authorization_code',
    client_id: settings.client_id,
    code,
    redirect_uri: settings.redirect_uri,
    code_verifier: verifier,
  });
}

export function logoutUrl(settings: CognitoSettings): string {
  const params = new URLSearchParams({ client_id: settings.client_id, logout_uri: settings.logout_uri ?? settings.redirect_uri });
  return `${settings.domain}/logout?${params.toString()}`;
}

/** What the hosted UI put on the return URL: a code and state, or an error. */
export function parseCallback(search: string): { code?: string; state?: string; error?: string } | null {
  const params = new URLSearchParams(search);
  const code = params.get('code') ?? undefined;
  const error = params.get('error_description') ?? params.get('error') ?? undefined;
  if (!code && !error) return null;
  return { code, state: params.get('state') ?? undefined, error };
}
