// Fetch wrapper for the same-origin API. The bearer token lives only in this module variable:
// never in localStorage, sessionStorage, IndexedDB, cookies or the URL.

import type { CredentialFieldSpec } from './validation';

let token: string | null = null;
let onUnauthorized: (() => void) | null = null;

export function setToken(value: string | null): void {
  token = value;
}
export function hasToken(): boolean {
  return token !== null;
}
/** Called once on a 401 from any call: the app goes back to sign-in. */
export function setUnauthorizedHandler(handler: (() => void) | null): void {
  onUnauthorized = handler;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
    readonly requestId?: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export interface ApiResult<T> {
  data: T;
  etag: string | null;
  status: number;
}

interface RequestOptions {
  body?: unknown;
  headers?: Record<string, string>;
  auth?: boolean;
}

const FALLBACK: Record<number, string> = {
  401: 'Your session ended. Sign in again.',
  403: 'Your role does not allow this.',
  404: 'Not found.',
  409: 'Conflict with the current state; reload and try again.',
  412: 'Someone else changed this key; reload and try again.',
  413: 'The request is too large.',
  422: 'The server could not accept these values.',
  429: 'Too many requests; wait a moment and try again.',
  503: 'The service is unavailable; try again shortly.',
};

export async function request<T>(method: string, path: string, options: RequestOptions = {}): Promise<ApiResult<T>> {
  const headers: Record<string, string> = { Accept: 'application/json', ...options.headers };
  if (options.auth !== false) {
    if (!token) {
      onUnauthorized?.();
      throw new ApiError(401, 'not_signed_in', FALLBACK[401]);
    }
    headers.Authorization = `Bearer ${token}`;
  }
  let body: string | undefined;
  if (options.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(options.body);
  }
  let response: Response;
  try {
    response = await fetch(path, { method, headers, body, credentials: 'omit', cache: 'no-store', redirect: 'error' });
  } catch {
    throw new ApiError(0, 'network_error', 'Could not reach the server. Check your connection and try again.');
  }
  const etag = response.headers.get('ETag');
  const text = response.status === 204 ? '' : await response.text();
  let json: unknown = undefined;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
  }
  if (!response.ok) {
    const envelope = (json as { error?: { code?: string; message?: string; field?: string; request_id?: string } } | undefined)?.error;
    const error = new ApiError(
      response.status,
      envelope?.code ?? `http_${response.status}`,
      envelope?.message ?? FALLBACK[response.status] ?? `Request failed (HTTP ${response.status}).`,
      envelope?.field,
      envelope?.request_id,
    );
    if (response.status === 401 && options.auth !== false) {
      token = null;
      onUnauthorized?.();
    }
    throw error;
  }
  return { data: json as T, etag, status: response.status };
}

// ---- Shapes (see /api/openapi.json) ----

export type Environment = 'production' | 'development';
export type Role = 'admin' | 'member' | 'viewer';

export interface ProviderEnvironment {
  id: Environment;
  label: string;
}
export interface Provider {
  id: string;
  name: string;
  category: string;
  description: string;
  docs_url: string;
  key_url: string;
  admin_only: boolean;
  fields: CredentialFieldSpec[];
  environments: ProviderEnvironment[];
  test?: { cost_note?: string | null } & Record<string, unknown>;
  rate_limits?: Record<string, unknown> & { note?: string | null };
  notes?: string[];
}
export interface Category {
  id: string;
  label: string;
  providers: Provider[];
}

export interface TestResult {
  ok: boolean;
  status: string;
  message: string;
  latency_ms?: number | null;
  upstream_status?: number | null;
  tested_at?: string;
}

export interface Actor {
  sub?: string;
  email?: string;
}

export interface RotationPolicy {
  rotate_every_days?: number | null;
  notify_before_days?: number | null;
  expires_at?: string | null;
}

export interface KeyRecord {
  id: string;
  provider: string;
  environment: Environment;
  label: string;
  masked: Record<string, string>;
  fingerprint: string;
  status: string;
  key_version: number;
  version: number;
  warnings: { field: string; code?: string; message: string }[];
  created_by: Actor;
  created_at: string;
  updated_by?: Actor;
  updated_at: string;
  last_used_at?: string | null;
  last_verified_at?: string | null;
  last_test?: TestResult | null;
  revocation?: { by: Actor; at: string; reason: string } | null;
  policy?: RotationPolicy;
  pending?: { key_version: number; step: string; masked: Record<string, string> } | null;
  previous?: { key_version: number; masked: Record<string, string>; grace_until: string } | null;
  last_rotation?: Record<string, unknown> | null;
  rotation_due_at?: string | null;
}

export interface UsageCounts {
  requests: number;
  cache_hits: number;
  rate_limited: number;
  auth_errors: number;
  client_errors: number;
  server_errors: number;
  network_errors: number;
  input_tokens: number;
  output_tokens: number;
  cost_micro_usd: number;
}
/** One provider, environment and UTC day: the counts are flattened into it, as the API sends them. */
export interface UsageDay extends UsageCounts {
  provider: string;
  environment: Environment;
  day: string;
  latency_p50_ms?: number | null;
  latency_p95_ms?: number | null;
  cache_hit_rate?: number | null;
}
export interface UsageTotal extends UsageCounts {
  provider: string;
  environment: Environment;
  latency_p50_ms?: number | null;
  latency_p95_ms?: number | null;
  cache_hit_rate?: number | null;
}
export interface UsageReport {
  from: string;
  to: string;
  days: UsageDay[];
  totals: UsageTotal[];
}

export type LimitKind = 'requests_per_minute' | 'requests_per_day' | 'requests_per_month' | 'llm_tokens_per_month';
export interface EnvironmentQuota {
  environment: Environment;
  limits: Partial<Record<LimitKind, number | null>>;
  defaults: Partial<Record<LimitKind, number | null>>;
  custom: boolean;
  used: { requests_this_minute: number; requests_today: number; requests_this_month: number; llm_tokens_this_month: number };
  percent_used: { limit: LimitKind; percent: number }[];
}
export interface QuotaView {
  provider: string;
  environments: EnvironmentQuota[];
}

export interface Notification {
  id: string;
  kind: string;
  provider?: string | null;
  environment?: string | null;
  key_id?: string | null;
  message: string;
  created_at: string;
  read_at?: string | null;
}

export interface AuditEntry {
  seq: number;
  time: string;
  actor_email?: string;
  actor_sub?: string;
  role?: string;
  action: string;
  provider?: string | null;
  environment?: string | null;
  key_id?: string | null;
  outcome: string;
  source_ip?: string | null;
  user_agent?: string | null;
  request_id?: string | null;
  detail?: unknown;
  [extra: string]: unknown;
}

// ---- Calls ----

const enc = encodeURIComponent;

function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

export const api = {
  providers: () => request<{ categories: Category[] }>('GET', '/api/providers'),
  keys: () => request<{ items: KeyRecord[]; next_cursor?: string | null }>('GET', '/api/keys?limit=200'),
  createKey: (body: { provider: string; environment: Environment; label: string; credentials: Record<string, string>; rotation_policy?: RotationPolicy }) =>
    request<KeyRecord>('POST', '/api/keys', { body }),
  updateKey: (
    id: string,
    body: { label?: string; environment?: Environment; credentials?: Record<string, string | null>; rotation_policy?: RotationPolicy },
    ifMatch?: string,
  ) => request<KeyRecord>('PATCH', `/api/keys/${enc(id)}`, { body, headers: ifMatch ? { 'If-Match': ifMatch } : undefined }),
  deleteKey: (id: string) => request<void>('DELETE', `/api/keys/${enc(id)}`),
  testCandidate: (body: { provider: string; environment: Environment; credentials: Record<string, string> }) =>
    request<TestResult>('POST', '/api/keys/test', { body }),
  testKey: (id: string) => request<TestResult>('POST', `/api/keys/${enc(id)}/test`, { body: {} }),
  rotateKey: (id: string, body: { credentials: Record<string, string>; grace_hours?: number }, idempotencyKey: string) =>
    request<KeyRecord>('POST', `/api/keys/${enc(id)}/rotate`, { body, headers: { 'Idempotency-Key': idempotencyKey } }),
  rollbackKey: (id: string) => request<KeyRecord>('POST', `/api/keys/${enc(id)}/rollback`, { body: {} }),
  revokeKey: (id: string, reason: string) => request<KeyRecord>('POST', `/api/keys/${enc(id)}/revoke`, { body: { reason } }),
  usage: (params: { provider?: string; from?: string; to?: string }) => request<UsageReport>('GET', `/api/usage${query(params)}`),
  quotas: (provider: string) => request<QuotaView>('GET', `/api/quotas/${enc(provider)}`),
  notifications: () => request<{ items: Notification[]; next_cursor?: string | null }>('GET', '/api/notifications'),
  markRead: (id: string) => request<unknown>('POST', `/api/notifications/${enc(id)}/read`, { body: {} }),
  audit: (params: { action?: string; provider?: string; actor?: string; key_id?: string; from?: string; to?: string; limit?: number; cursor?: string }) =>
    request<{ items: AuditEntry[]; next_cursor?: string | null }>('GET', `/api/audit${query(params)}`),
};
