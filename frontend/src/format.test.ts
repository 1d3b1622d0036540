import { describe, expect, it } from 'vitest';
import { csvCell, exactTime, quotaPercent, quotaState, relativeTime, statusInfo, toCsv } from './format';

const now = new Date('2026-11-25T12:00:00Z');
const ago = (s: number) => new Date(now.getTime() - s * 1000).toISOString();

describe('relativeTime', () => {
  it('says just now for under 45 seconds', () => {
    expect(relativeTime(ago(10), now)).toBe('just now');
    expect(relativeTime(ago(-10), now)).toBe('just now');
  });
  it('uses minutes, hours, days with correct plurals', () => {
    expect(relativeTime(ago(60), now)).toBe('1 minute ago');
    expect(relativeTime(ago(180), now)).toBe('3 minutes ago');
    expect(relativeTime(ago(3600), now)).toBe('1 hour ago');
    expect(relativeTime(ago(5 * 3600 + 59), now)).toBe('5 hours ago');
    expect(relativeTime(ago(2 * 86400), now)).toBe('2 days ago');
    expect(relativeTime(ago(14 * 86400), now)).toBe('2 weeks ago');
    expect(relativeTime(ago(400 * 86400), now)).toBe('1 year ago');
  });
  it('handles the future', () => {
    expect(relativeTime(ago(-3 * 86400), now)).toBe('in 3 days');
  });
  it('treats 45..59 seconds as a minute and bad input as unknown', () => {
    expect(relativeTime(ago(50), now)).toBe('1 minute ago');
    expect(relativeTime('not a date', now)).toBe('unknown');
  });
});

describe('exactTime', () => {
  it('prints UTC without milliseconds', () => {
    expect(exactTime('2026-11-25T12:00:00.123Z')).toBe('2026-11-25 12:00:00 UTC');
  });
});

describe('statusInfo', () => {
  it('labels every key status in words', () => {
    expect(statusInfo(undefined).label).toBe('Not configured');
    expect(statusInfo('active')).toEqual({ label: 'Active', tone: 'ok' });
    expect(statusInfo('rotation_due')).toEqual({ label: 'Rotation due', tone: 'warn' });
    expect(statusInfo('invalid').tone).toBe('danger');
    expect(statusInfo('expired').label).toBe('Expired');
    expect(statusInfo('revoked').label).toBe('Revoked');
    expect(statusInfo('something_new').label).toBe('Something new');
  });
});

describe('quotaState', () => {
  it('is ok below 80 %, warning from 80 %, reached from 100 %', () => {
    expect(quotaState(79, 100)).toBe('ok');
    expect(quotaState(80, 100)).toBe('warning');
    expect(quotaState(99, 100)).toBe('warning');
    expect(quotaState(100, 100)).toBe('reached');
    expect(quotaState(120, 100)).toBe('reached');
    expect(quotaState(199, 250)).toBe('ok');
    expect(quotaState(200, 250)).toBe('warning');
  });
  it('is unlimited without a limit', () => {
    expect(quotaState(5, null)).toBe('unlimited');
    expect(quotaState(5, 0)).toBe('unlimited');
  });
  it('clamps the percentage to 0..100', () => {
    expect(quotaPercent(150, 100)).toBe(100);
    expect(quotaPercent(1, 3)).toBe(33);
    expect(quotaPercent(1, undefined)).toBe(0);
  });
});

describe('CSV', () => {
  it('quotes commas, quotes and newlines and doubles quotes', () => {
    expect(csvCell('plain')).toBe('plain');
    expect(csvCell('a,b')).toBe('"a,b"');
    expect(csvCell('say "hi"')).toBe('"say ""hi"""');
    expect(csvCell('line1\nline2')).toBe('"line1\nline2"');
    expect(csvCell('cr\r')).toBe('"cr\r"');
    expect(csvCell(null)).toBe('');
    expect(csvCell(42)).toBe('42');
    expect(csvCell(-3)).toBe('-3');
  });
  it('neutralizes spreadsheet formulas in text cells', () => {
    expect(csvCell('=HYPERLINK("x")')).toBe('"\'=HYPERLINK(""x"")"');
    expect(csvCell('@SUM(A1)')).toBe("'@SUM(A1)");
  });
  it('builds a header and CRLF-separated rows', () => {
    const csv = toCsv(['seq', 'action', 'detail'], [
      { seq: 1, action: 'key.create', detail: 'ok' },
      { seq: 2, action: 'key.revoke', detail: 'leaked, in "chat"' },
    ]);
    expect(csv).toBe('seq,action,detail\r\n1,key.create,ok\r\n2,key.revoke,"leaked, in ""chat"""\r\n');
  });
  it('serializes object cells as JSON', () => {
    expect(csvCell({ a: 1 })).toBe('"{""a"":1}"');
  });
});
