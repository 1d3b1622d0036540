import { describe, expect, it } from 'vitest';
import { authorizeUrl, base64Url, challengeOf, cognitoSettings, logoutUrl, parseCallback, randomToken, tokenRequestBody } from './pkce';

const settings = { domain: 'https://pool.auth.eu-west-1.amazoncognito.com', client_id: 'abc123', redirect_uri: 'https://keys.example.com/' };

describe('pkce', () => {
  it('derives the S256 challenge of RFC 7636 appendix B', async () => {
    expect(await challengeOf('dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk')).toBe('E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM');
  });

  it('makes random verifiers of 43 url-safe characters', () => {
    const a = randomToken();
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(randomToken()).not.toBe(a);
    expect(base64Url(new Uint8Array([251, 255]))).toBe('-_8');
  });

  it('builds the authorize, token and logout requests', () => {
    const url = new URL(authorizeUrl(settings, 'challenge', 'state-1'));
    expect(url.origin + url.pathname).toBe('https://pool.auth.eu-west-1.amazoncognito.com/oauth2/authorize');
    expect(Object.fromEntries(url.searchParams)).toEqual({
      response_type: 'code',
      client_id: 'abc123',
      redirect_uri: 'https://keys.example.com/',
      scope: 'openid email stockpulse-keys/api',
      state: 'state-1',
      code_challenge: 'challenge',
      code_challenge_method: 'S256',
    });
    expect(Object.fromEntries(tokenRequestBody(settings, 'code-1', 'verifier-1'))).toEqual({
      grant_type: 'authorization_code',
      client_id: 'abc123',
      code: 'code-1',
      redirect_uri: 'https://keys.example.com/',
      code_verifier: 'verifier-1',
    });
    expect(logoutUrl(settings)).toBe('https://pool.auth.eu-west-1.amazoncognito.com/logout?client_id=abc123&logout_uri=https%3A%2F%2Fkeys.example.com%2F');
  });

  it('reads the callback and refuses incomplete settings', () => {
    expect(parseCallback('?code=c&state=s')).toEqual({ code: 'c', state: 's', error: undefined });
    expect(parseCallback('?error=access_denied&error_description=User+cancelled')?.error).toBe('User cancelled');
    expect(parseCallback('?tab=keys')).toBeNull();
    expect(cognitoSettings({ ...settings, domain: 'http://evil.example.com' })).toBeNull();
    expect(cognitoSettings({ domain: settings.domain })).toBeNull();
    expect(cognitoSettings({ ...settings, domain: `${settings.domain}/` })?.domain).toBe(settings.domain);
  });
});
