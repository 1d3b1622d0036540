// Pure credential format checks against the provider catalog's `format` rules.
//
// ERRORS block saving: a required field left empty, whitespace or control characters inside,
// longer than the catalog's max_length or than 4096 bytes (the server's hard limit).
// WARNINGS never block: unexpected prefix, pattern mismatch, shorter than min_length.
// The server re-checks everything; this only gives feedback while typing.

import type { RotationPolicy } from './api';

export const MAX_CREDENTIAL_BYTES = 4096;
export const MAX_LABEL_CHARS = 100;

export interface FieldFormat {
  prefixes?: string[];
  pattern?: string | null;
  min_length?: number | null;
  max_length?: number | null;
  hint?: string | null;
}

export interface CredentialFieldSpec {
  id: string;
  label: string;
  required: boolean;
  secret: boolean;
  help?: string | null;
  format?: FieldFormat | null;
}

export interface FieldCheck {
  errors: string[];
  warnings: string[];
}

/** create: required fields must be filled; edit and rotate: an empty field keeps the stored
 *  value (rotation needs at least one new value, see `anyValue`). */
export type CredentialMode = 'create' | 'edit' | 'rotate';

const WHITESPACE = /\s/u;
// C0/C1 control characters (whitespace ones are reported as whitespace first).
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/u;

function byteLength(value: string): number {
  return new TextEncoder().encode(value).length;
}

function charLength(value: string): number {
  return Array.from(value).length;
}

const patternCache = new Map<string, RegExp | null>();
function compile(pattern: string): RegExp | null {
  if (!patternCache.has(pattern)) {
    let re: RegExp | null = null;
    try {
      re = new RegExp(pattern, 'u');
    } catch {
      try {
        re = new RegExp(pattern);
      } catch {
        re = null; // a pattern JS cannot read is skipped; the server still checks it
      }
    }
    patternCache.set(pattern, re);
  }
  return patternCache.get(pattern) ?? null;
}

export function checkField(field: CredentialFieldSpec, value: string, mode: CredentialMode = 'create'): FieldCheck {
  const errors: string[] = [];
  const warnings: string[] = [];
  const label = field.label;
  if (value === '') {
    if (field.required && mode === 'create') errors.push(`${label} is required.`);
    return { errors, warnings };
  }
  const rules = field.format ?? {};
  const length = charLength(value);
  if (WHITESPACE.test(value)) {
    errors.push(`${label} contains whitespace (a space, tab or line break); paste the key without it.`);
  } else if (CONTROL.test(value)) {
    errors.push(`${label} contains control characters.`);
  }
  const bytes = byteLength(value);
  if (bytes > MAX_CREDENTIAL_BYTES) {
    errors.push(`${label} is ${bytes} bytes; no provider key is longer than ${MAX_CREDENTIAL_BYTES}.`);
  } else if (rules.max_length != null && length > rules.max_length) {
    errors.push(`${label} is ${length} characters; at most ${rules.max_length} expected.`);
  }
  const prefixes = rules.prefixes ?? [];
  if (prefixes.length > 0 && !prefixes.some((p) => value.startsWith(p))) {
    warnings.push(`${label} usually starts with ${prefixes.join(' or ')}.`);
  }
  if (rules.min_length != null && length < rules.min_length) {
    warnings.push(`${label} is ${length} characters; usually at least ${rules.min_length}.`);
  }
  if (rules.pattern) {
    const re = compile(rules.pattern);
    if (re && !re.test(value)) warnings.push(`${label} does not look like a usual ${label} value.`);
  }
  if (warnings.length > 0 && rules.hint) warnings.push(rules.hint);
  return { errors, warnings };
}

export interface CredentialsCheck {
  fields: Record<string, FieldCheck>;
  /** true when nothing blocks saving */
  valid: boolean;
  /** true when at least one credential value was typed */
  anyValue: boolean;
}

export function checkCredentials(
  fields: CredentialFieldSpec[],
  values: Record<string, string>,
  mode: CredentialMode = 'create',
): CredentialsCheck {
  const result: Record<string, FieldCheck> = {};
  let valid = true;
  let anyValue = false;
  for (const field of fields) {
    const value = values[field.id] ?? '';
    if (value !== '') anyValue = true;
    const check = checkField(field, value, mode);
    result[field.id] = check;
    if (check.errors.length > 0) valid = false;
  }
  return { fields: result, valid, anyValue };
}

export function checkLabel(label: string): string[] {
  const trimmed = label.trim();
  const errors: string[] = [];
  if (charLength(trimmed) > MAX_LABEL_CHARS) errors.push(`Label is longer than ${MAX_LABEL_CHARS} characters.`);
  if (CONTROL.test(trimmed)) errors.push('Label contains control characters.');
  return errors;
}

/** The rotation policy as typed in the form: numbers of days and an expiry date (`YYYY-MM-DD`). */
export interface PolicyInput {
  rotateEveryDays: string;
  notifyBeforeDays: string;
  expiresOn: string;
}

/** Checks the policy fields like the server does; `policy` is what to send (empty fields left out). */
export function checkPolicy(input: PolicyInput, today: string): { errors: Partial<Record<keyof PolicyInput, string>>; policy: RotationPolicy } {
  const errors: Partial<Record<keyof PolicyInput, string>> = {};
  const policy: RotationPolicy = {};
  const days = (value: string, min: number, key: keyof PolicyInput, label: string) => {
    if (value.trim() === '') return undefined;
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > 3650) {
      errors[key] = `${label} must be a whole number from ${min} to 3650.`;
      return undefined;
    }
    return n;
  };
  const every = days(input.rotateEveryDays, 1, 'rotateEveryDays', 'Rotate every');
  if (every !== undefined) policy.rotate_every_days = every;
  const before = days(input.notifyBeforeDays, 0, 'notifyBeforeDays', 'Remind before');
  if (before !== undefined) policy.notify_before_days = before;
  if (input.expiresOn.trim() !== '') {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(input.expiresOn) || Number.isNaN(Date.parse(`${input.expiresOn}T00:00:00Z`))) {
      errors.expiresOn = 'Give the expiry as a date.';
    } else if (input.expiresOn <= today) {
      errors.expiresOn = 'The expiry date must be in the future.';
    } else {
      policy.expires_at = `${input.expiresOn}T00:00:00Z`;
    }
  }
  return { errors, policy };
}

/** The form's values for a stored policy. */
export function policyInput(policy: RotationPolicy | undefined): PolicyInput {
  return {
    rotateEveryDays: policy?.rotate_every_days != null ? String(policy.rotate_every_days) : '',
    notifyBeforeDays: policy?.notify_before_days != null ? String(policy.notify_before_days) : '',
    expiresOn: policy?.expires_at ? policy.expires_at.slice(0, 10) : '',
  };
}
