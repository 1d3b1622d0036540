import { describe, expect, it } from 'vitest';
import { checkCredentials, checkField, checkLabel, checkPolicy, policyInput, type CredentialFieldSpec } from './validation';

const openaiKey: CredentialFieldSpec = {
  id: 'api_key',
  label: 'API Key',
  required: true,
  secret: true,
  format: {
    prefixes: ['sk-proj-', 'sk-'],
    pattern: '^sk-[A-Za-z0-9_-]{20,}$',
    min_length: 40,
    max_length: 200,
    hint: 'OpenAI keys start with sk-proj- (project keys) or sk-.',
  },
};
const orgId: CredentialFieldSpec = {
  id: 'organization',
  label: 'Organization ID',
  required: false,
  secret: false,
  format: { prefixes: ['org-'], pattern: '^org-[A-Za-z0-9]+$' },
};
const good = 'sk-proj-' + 'a'.repeat(48);

describe('checkField', () => {
  it('accepts a well-formed key with no errors or warnings', () => {
    expect(checkField(openaiKey, good)).toEqual({ errors: [], warnings: [] });
  });

  it('errors on an empty required field in create mode, not in edit or rotate mode (kept)', () => {
    expect(checkField(openaiKey, '').errors).toHaveLength(1);
    expect(checkField(openaiKey, '', 'rotate').errors).toEqual([]);
    expect(checkField(openaiKey, '', 'edit').errors).toEqual([]);
  });

  it('does not error on an empty optional field', () => {
    expect(checkField(orgId, '')).toEqual({ errors: [], warnings: [] });
  });

  it('errors on whitespace inside the value (space, tab, newline)', () => {
    for (const v of [good + ' ', ' ' + good, 'sk-proj-abc def' + 'x'.repeat(40), good + '\n', 'sk-\tabc']) {
      const r = checkField(openaiKey, v);
      expect(r.errors.join(' ')).toMatch(/whitespace/);
    }
  });

  it('errors on control characters', () => {
    expect(checkField(openaiKey, good + '\u0000').errors.join(' ')).toMatch(/control/);
  });

  it('errors when longer than max_length', () => {
    const r = checkField(openaiKey, 'sk-' + 'a'.repeat(200));
    expect(r.errors.join(' ')).toMatch(/at most 200/);
  });

  it('errors when longer than 4096 bytes even without a max_length', () => {
    const noMax: CredentialFieldSpec = { ...openaiKey, format: {} };
    expect(checkField(noMax, 'a'.repeat(4096)).errors).toEqual([]);
    expect(checkField(noMax, 'a'.repeat(4097)).errors.join(' ')).toMatch(/4096/);
    // multi-byte characters count in bytes for the hard limit
    expect(checkField(noMax, 'é'.repeat(2049)).errors.join(' ')).toMatch(/4098 bytes/);
  });

  it('warns (does not error) on an unknown prefix and shows the hint', () => {
    const r = checkField(openaiKey, 'pk-' + 'a'.repeat(50));
    expect(r.errors).toEqual([]);
    expect(r.warnings.join(' ')).toMatch(/usually starts with sk-proj- or sk-/);
    expect(r.warnings).toContain('OpenAI keys start with sk-proj- (project keys) or sk-.');
  });

  it('warns on a pattern mismatch', () => {
    const r = checkField(orgId, 'org-abc_def');
    expect(r.errors).toEqual([]);
    expect(r.warnings.join(' ')).toMatch(/does not look like/);
    expect(checkField(orgId, 'org-abc123').warnings).toEqual([]);
  });

  it('warns when shorter than min_length', () => {
    const r = checkField(openaiKey, 'sk-' + 'a'.repeat(25));
    expect(r.errors).toEqual([]);
    expect(r.warnings.join(' ')).toMatch(/usually at least 40/);
  });

  it('counts characters, not UTF-16 units, for min/max length', () => {
    const f: CredentialFieldSpec = { id: 'k', label: 'Key', required: true, secret: true, format: { max_length: 3 } };
    expect(checkField(f, '😀😀😀').errors).toEqual([]);
    expect(checkField(f, '😀😀😀😀').errors).toHaveLength(1);
  });

  it('skips a pattern JavaScript cannot compile instead of failing', () => {
    const f: CredentialFieldSpec = { id: 'k', label: 'Key', required: true, secret: true, format: { pattern: '(?P<x>a)' } };
    expect(checkField(f, 'abc')).toEqual({ errors: [], warnings: [] });
  });
});

describe('checkCredentials', () => {
  it('is valid only when every required field is valid', () => {
    expect(checkCredentials([openaiKey, orgId], { api_key: good }).valid).toBe(true);
    expect(checkCredentials([openaiKey, orgId], { organization: 'org-abc' }).valid).toBe(false);
    expect(checkCredentials([openaiKey, orgId], { api_key: good, organization: 'org x' }).valid).toBe(false);
  });

  it('warnings do not make the set invalid', () => {
    const r = checkCredentials([openaiKey], { api_key: 'xx-' + 'a'.repeat(45) });
    expect(r.valid).toBe(true);
    expect(r.fields.api_key.warnings.length).toBeGreaterThan(0);
  });

  it('in edit mode an all-empty form is valid and reports no value', () => {
    const r = checkCredentials([openaiKey, orgId], {}, 'edit');
    expect(r.valid).toBe(true);
    expect(r.anyValue).toBe(false);
  });
});

describe('checkLabel', () => {
  it('accepts up to 100 characters after trimming', () => {
    expect(checkLabel('  ' + 'a'.repeat(100) + '  ')).toEqual([]);
    expect(checkLabel('a'.repeat(101))).toHaveLength(1);
  });
});

describe('checkPolicy', () => {
  const today = '2026-11-25';
  it('sends only what is filled in, as the API takes it', () => {
    expect(checkPolicy({ rotateEveryDays: '90', notifyBeforeDays: '', expiresOn: '' }, today)).toEqual({ errors: {}, policy: { rotate_every_days: 90 } });
    expect(checkPolicy({ rotateEveryDays: '', notifyBeforeDays: '0', expiresOn: '2027-01-31' }, today).policy).toEqual({
      notify_before_days: 0,
      expires_at: '2027-01-31T00:00:00Z',
    });
    expect(checkPolicy({ rotateEveryDays: '', notifyBeforeDays: '', expiresOn: '' }, today)).toEqual({ errors: {}, policy: {} });
  });
  it('refuses what the server refuses', () => {
    const { errors } = checkPolicy({ rotateEveryDays: '0', notifyBeforeDays: '4000', expiresOn: '2026-11-25' }, today);
    expect(Object.keys(errors).sort()).toEqual(['expiresOn', 'notifyBeforeDays', 'rotateEveryDays']);
    expect(checkPolicy({ rotateEveryDays: '1.5', notifyBeforeDays: '', expiresOn: '' }, today).errors.rotateEveryDays).toBeDefined();
  });
  it('shows a stored policy in the form', () => {
    expect(policyInput({ rotate_every_days: 30, expires_at: '2027-02-01T00:00:00Z' })).toEqual({ rotateEveryDays: '30', notifyBeforeDays: '', expiresOn: '2027-02-01' });
    expect(policyInput(undefined)).toEqual({ rotateEveryDays: '', notifyBeforeDays: '', expiresOn: '' });
  });
});
