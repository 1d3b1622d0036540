// Pure formatting helpers: relative times, status labels, quota thresholds, CSV.

const UNITS: [Intl.RelativeTimeFormatUnit, number][] = [
  ['year', 365 * 24 * 3600],
  ['month', 30 * 24 * 3600],
  ['week', 7 * 24 * 3600],
  ['day', 24 * 3600],
  ['hour', 3600],
  ['minute', 60],
];

/** "3 minutes ago", "in 2 days", "just now". Uses English plural rules on purpose (stable in tests). */
export function relativeTime(when: string | Date, now: Date = new Date()): string {
  const date = typeof when === 'string' ? new Date(when) : when;
  const t = date.getTime();
  if (Number.isNaN(t)) return 'unknown';
  const deltaSeconds = Math.round((t - now.getTime()) / 1000);
  const abs = Math.abs(deltaSeconds);
  if (abs < 45) return 'just now';
  for (const [unit, seconds] of UNITS) {
    if (abs >= seconds) {
      const n = Math.floor(abs / seconds);
      const word = n === 1 ? unit : `${unit}s`;
      return deltaSeconds < 0 ? `${n} ${word} ago` : `in ${n} ${word}`;
    }
  }
  return deltaSeconds < 0 ? '1 minute ago' : 'in 1 minute';
}

/** Exact time for tooltips: ISO-like in UTC, unambiguous for every reader. */
export function exactTime(when: string | Date): string {
  const date = typeof when === 'string' ? new Date(when) : when;
  if (Number.isNaN(date.getTime())) return String(when);
  return date.toISOString().replace('T', ' ').replace(/\.\d{3}Z$/, ' UTC');
}

export type KeyStatus = 'active' | 'pending' | 'invalid' | 'revoked' | 'rotation_due' | 'expired';
export type StatusTone = 'ok' | 'info' | 'warn' | 'danger' | 'muted';

const STATUS: Record<string, { label: string; tone: StatusTone }> = {
  not_configured: { label: 'Not configured', tone: 'muted' },
  active: { label: 'Active', tone: 'ok' },
  pending: { label: 'Pending', tone: 'info' },
  invalid: { label: 'Invalid', tone: 'danger' },
  rotation_due: { label: 'Rotation due', tone: 'warn' },
  expired: { label: 'Expired', tone: 'danger' },
  revoked: { label: 'Revoked', tone: 'muted' },
};

export function statusInfo(status: string | null | undefined): { label: string; tone: StatusTone } {
  if (!status) return STATUS.not_configured;
  return STATUS[status] ?? { label: humanize(status), tone: 'info' };
}

const TEST_STATUS: Record<string, string> = {
  valid: 'Valid',
  invalid: 'Invalid key',
  forbidden: 'Key lacks permission',
  rate_limited: 'Rate limited',
  unreachable: 'Provider unreachable',
  upstream_error: 'Provider error',
  unexpected: 'Unexpected answer',
};

export function testStatusLabel(status: string): string {
  return TEST_STATUS[status] ?? humanize(status);
}

export function humanize(code: string): string {
  const s = code.replace(/_/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

export function environmentLabel(env: string): string {
  return env === 'production' ? 'Production' : env === 'development' ? 'Development' : humanize(env);
}

export type QuotaState = 'ok' | 'warning' | 'reached' | 'unlimited';

/** 80 % and above is a warning, 100 % and above is reached. No limit means unlimited. */
export function quotaState(used: number, limit: number | null | undefined): QuotaState {
  if (limit == null || limit <= 0) return 'unlimited';
  const ratio = used / limit;
  if (ratio >= 1) return 'reached';
  if (ratio >= 0.8) return 'warning';
  return 'ok';
}

export function quotaPercent(used: number, limit: number | null | undefined): number {
  if (limit == null || limit <= 0) return 0;
  return Math.min(100, Math.max(0, Math.round((used / limit) * 100)));
}

export function formatNumber(n: number | null | undefined): string {
  if (n == null || Number.isNaN(n)) return '–';
  return new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 }).format(n);
}

export function formatPercent(ratio: number | null | undefined): string {
  if (ratio == null || Number.isNaN(ratio)) return '–';
  return `${Math.round(ratio * 1000) / 10}%`;
}

/** RFC 4180 field: quoted when it holds a comma, quote, CR or LF; quotes doubled.
 *  Cells starting with = + - @ (or tab/CR) get a leading ' so spreadsheets do not run them as formulas. */
export function csvCell(value: unknown): string {
  if (value == null) return '';
  let s = typeof value === 'object' ? JSON.stringify(value) : String(value);
  if (typeof value === 'string' && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  if (/[",\r\n]/.test(s)) return `"${s.replace(/"/g, '""')}"`;
  return s;
}

export function toCsv(columns: string[], rows: Record<string, unknown>[]): string {
  const lines = [columns.map(csvCell).join(',')];
  for (const row of rows) lines.push(columns.map((c) => csvCell(row[c])).join(','));
  return lines.join('\r\n') + '\r\n';
}
