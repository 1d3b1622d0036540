import { useMemo, useRef, useState } from 'preact/hooks';
import { api, ApiError, type Environment, type KeyRecord, type Provider, type TestResult } from '../api';
import { environmentLabel } from '../format';
import { checkCredentials, checkLabel, checkPolicy, policyInput, type CredentialMode, type PolicyInput } from '../validation';
import { ProviderLogo } from './Logo';
import { Modal } from './Modal';
import { TestResultView } from './TestResultView';

export type KeyFormMode = CredentialMode;

interface Props {
  mode: KeyFormMode;
  provider: Provider;
  /** create mode: providers the user may pick for "Save and Add Another" */
  providers?: Provider[];
  environment: Environment;
  record?: KeyRecord;
  /** keys already stored, to steer "Save and Add Another" to a free slot */
  existing?: KeyRecord[];
  onSaved: (record: KeyRecord, keepOpen: boolean) => void;
  onClose: () => void;
}

const TITLES: Record<KeyFormMode, string> = { create: 'Add key', edit: 'Edit key', rotate: 'Rotate key' };
const ENVS: Environment[] = ['production', 'development'];

export function KeyFormModal(props: Props) {
  const { mode, record, onClose, onSaved, existing = [] } = props;
  const [provider, setProvider] = useState<Provider>(props.provider);
  const [environment, setEnvironment] = useState<Environment>(props.environment);
  const [values, setValues] = useState<Record<string, string>>({});
  const [touched, setTouched] = useState<Record<string, boolean>>({});
  const [label, setLabel] = useState(mode === 'create' ? '' : (record?.label ?? ''));
  const [graceHours, setGraceHours] = useState('24');
  const storedPolicy = policyInput(mode === 'create' ? undefined : record?.policy);
  const [policy, setPolicy] = useState<PolicyInput>(storedPolicy);
  const [error, setError] = useState<{ message: string; field?: string } | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [warnings, setWarnings] = useState<string[]>([]);
  const [test, setTest] = useState<TestResult | null>(null);
  const [busy, setBusy] = useState<'save' | 'test' | null>(null);
  // One Idempotency-Key per rotation attempt; reused when the same attempt is retried.
  const attemptKey = useRef<string | null>(null);

  const check = useMemo(() => checkCredentials(provider.fields, values, mode), [provider, values, mode]);
  const labelErrors = checkLabel(label);
  const graceNumber = Number(graceHours);
  const graceValid = mode !== 'rotate' || (graceHours.trim() !== '' && Number.isInteger(graceNumber) && graceNumber >= 0 && graceNumber <= 720);
  const labelRequired = mode === 'edit';
  const labelOk = labelErrors.length === 0 && (!labelRequired || label.trim() !== '');
  const policyCheck = checkPolicy(policy, new Date().toISOString().slice(0, 10));
  const policyOk = mode === 'rotate' || Object.keys(policyCheck.errors).length === 0;
  const policyChanged = JSON.stringify(policy) !== JSON.stringify(storedPolicy);
  const canSave = check.valid && labelOk && graceValid && policyOk && (mode !== 'rotate' || check.anyValue) && busy === null;
  const allRequiredTyped = provider.fields.every((f) => !f.required || (values[f.id] ?? '') !== '');
  const canTestCandidate = check.valid && allRequiredTyped && check.anyValue;
  const canTestStored = mode === 'edit' && !check.anyValue && !!record;

  const setValue = (id: string, v: string) => {
    setValues((old) => ({ ...old, [id]: v }));
    setTest(null);
    attemptKey.current = null; // new values: a new attempt
    if (error?.field === `credentials.${id}`) setError(null);
  };

  const typedCredentials = (): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const f of provider.fields) if ((values[f.id] ?? '') !== '') out[f.id] = values[f.id];
    return out;
  };

  const showError = (e: unknown) => {
    if (e instanceof ApiError) setError({ message: e.message, field: e.field });
    else setError({ message: 'Something went wrong.' });
  };

  const runTest = async () => {
    setBusy('test');
    setError(null);
    setTest(null);
    try {
      const { data } =
        canTestCandidate
          ? await api.testCandidate({ provider: provider.id, environment, credentials: typedCredentials() })
          : await api.testKey(record!.id);
      setTest(data);
    } catch (e) {
      showError(e);
    } finally {
      setBusy(null);
    }
  };

  const clearCredentials = () => {
    setValues({});
    setTouched({});
    setTest(null);
  };

  const save = async (keepOpen: boolean) => {
    if (!canSave) return;
    setBusy('save');
    setError(null);
    setNotice(null);
    setWarnings([]);
    try {
      let saved: KeyRecord;
      if (mode === 'create') {
        const rotation_policy = policyChanged ? policyCheck.policy : undefined;
        ({ data: saved } = await api.createKey({ provider: provider.id, environment, label: label.trim(), credentials: typedCredentials(), rotation_policy }));
      } else if (mode === 'edit') {
        const body: Parameters<typeof api.updateKey>[1] = {};
        if (label.trim() !== record!.label) body.label = label.trim();
        if (environment !== record!.environment) body.environment = environment;
        if (check.anyValue) body.credentials = typedCredentials();
        if (policyChanged) body.rotation_policy = policyCheck.policy;
        ({ data: saved } = await api.updateKey(record!.id, body, `"${record!.version}"`));
      } else {
        attemptKey.current ??= crypto.randomUUID();
        ({ data: saved } = await api.rotateKey(record!.id, { credentials: typedCredentials(), grace_hours: graceNumber }, attemptKey.current));
        attemptKey.current = null;
      }
      clearCredentials();
      const savedWarnings = (saved.warnings ?? []).map((w) => w.message);
      onSaved(saved, keepOpen);
      if (keepOpen) {
        setLabel('');
        setPolicy(policyInput(undefined));
        setWarnings(savedWarnings);
        setNotice(`Saved ${provider.name} (${environmentLabel(saved.environment)}). The key will not be shown again. Add the next one.`);
        const taken = new Set([...existing, saved].filter((k) => k.provider === provider.id).map((k) => k.environment));
        const free = ENVS.find((env) => !taken.has(env));
        if (free) setEnvironment(free);
      }
    } catch (e) {
      // A failed rotation attempt with a definite answer ends that attempt; network errors and
      // 5xx keep the key so a retry resumes the same attempt.
      if (e instanceof ApiError && e.status !== 0 && e.status < 500) attemptKey.current = null;
      showError(e);
    } finally {
      setBusy(null);
    }
  };

  const fieldError = (id: string) => error?.field === `credentials.${id}` || (error?.field === 'credentials' && !!values[id]);
  const title = `${TITLES[mode]}: ${provider.name}`;

  return (
    <Modal title={title} onClose={onClose} wide>
      <form
        class="form"
        noValidate
        onSubmit={(e) => {
          e.preventDefault();
          void save(false);
        }}
      >
        <div class="provider-intro">
          <ProviderLogo id={provider.id} name={provider.name} />
          <div>
            <p class="muted">{provider.description}</p>
            <p class="links">
              <a href={provider.docs_url} target="_blank" rel="noopener noreferrer">
                {provider.name} API documentation
              </a>
              <a href={provider.key_url} target="_blank" rel="noopener noreferrer">
                Get {/^[AEIOU]/i.test(provider.name) ? "an" : "a"} {provider.name} API key
              </a>
            </p>
          </div>
        </div>

        {mode === 'create' && props.providers && props.providers.length > 1 && (
          <div class="field">
            <label for="kf-provider">Provider</label>
            <select
              id="kf-provider"
              value={provider.id}
              onChange={(e) => {
                const next = props.providers!.find((p) => p.id === e.currentTarget.value);
                if (next) {
                  setProvider(next);
                  clearCredentials();
                  setError(null);
                }
              }}
            >
              {props.providers.map((p) => (
                <option key={p.id} value={p.id}>
                  {p.name}
                </option>
              ))}
            </select>
          </div>
        )}

        {mode !== 'rotate' && (
          <div class="field">
            <label for="kf-environment">Environment</label>
            <select id="kf-environment" value={environment} aria-invalid={error?.field === 'environment' || undefined}
              onChange={(e) => setEnvironment(e.currentTarget.value as Environment)}>
              <option value="production">Production</option>
              <option value="development">Development</option>
            </select>
          </div>
        )}

        {mode === 'rotate' && (
          <p class="muted">
            Enter the new credentials the provider issued. They are tested before they replace the current key; fields left empty keep their
            value. The replaced key stays available for a rollback during the grace period.
          </p>
        )}
        {mode === 'edit' && <p class="muted">Credential fields are optional: leave them empty to keep the stored values.</p>}

        {provider.fields.map((f) => {
          const v = values[f.id] ?? '';
          const c = check.fields[f.id];
          const show = touched[f.id] || v !== '';
          const errs = show ? c.errors : [];
          const warns = show && c.errors.length === 0 ? c.warnings : [];
          const current = record?.masked?.[f.id];
          const inputId = `kf-${f.id}`;
          const describedBy = [f.help ? `${inputId}-help` : '', current ? `${inputId}-current` : '', errs.length ? `${inputId}-error` : '', warns.length ? `${inputId}-warning` : '']
            .filter(Boolean)
            .join(' ');
          const required = f.required && mode === 'create';
          return (
            <div class="field" key={`${provider.id}-${f.id}`}>
              <label for={inputId}>
                {f.label}
                {required && <span class="required"> (required)</span>}
                {!required && mode !== 'create' && <span class="muted"> (leave empty to keep)</span>}
                {!f.required && mode === 'create' && <span class="muted"> (optional)</span>}
              </label>
              <div class="input-row">
                <input
                  id={inputId}
                  name={f.id}
                  type={f.secret ? 'password' : 'text'}
                  autocomplete="off"
                  autocapitalize="off"
                  autocorrect="off"
                  spellcheck={false}
                  required={required}
                  value={v}
                  aria-invalid={errs.length > 0 || fieldError(f.id) || undefined}
                  aria-describedby={describedBy || undefined}
                  onInput={(e) => setValue(f.id, e.currentTarget.value)}
                  onBlur={() => setTouched((t) => ({ ...t, [f.id]: true }))}
                />
                {current && (
                  <span class="current-mask" id={`${inputId}-current`}>
                    Current: <code>{current}</code>
                  </span>
                )}
              </div>
              {f.help && (
                <p class="help" id={`${inputId}-help`}>
                  {f.help}
                </p>
              )}
              {errs.length > 0 && (
                <p class="error-text" id={`${inputId}-error`}>
                  {errs.join(' ')}
                </p>
              )}
              {warns.length > 0 && (
                <p class="warning-text" id={`${inputId}-warning`}>
                  Warning: {warns.join(' ')}
                </p>
              )}
            </div>
          );
        })}

        {mode !== 'rotate' && (
          <div class="field">
            <label for="kf-label">
              Label{mode === 'create' && <span class="muted"> (optional)</span>}
            </label>
            <input id="kf-label" type="text" maxLength={100} value={label} placeholder={`${provider.name} ${environmentLabel(environment).toLowerCase()}`}
              aria-invalid={labelErrors.length > 0 || error?.field === 'label' || undefined}
              aria-describedby={labelErrors.length ? 'kf-label-error' : undefined}
              onInput={(e) => setLabel(e.currentTarget.value)} />
            {labelErrors.length > 0 && (
              <p class="error-text" id="kf-label-error">
                {labelErrors.join(' ')}
              </p>
            )}
          </div>
        )}

        {mode !== 'rotate' && (
          <fieldset class="policy">
            <legend>Rotation policy (optional)</legend>
            {(
              [
                ['rotateEveryDays', 'Rotate every (days)', 'number'],
                ['notifyBeforeDays', 'Remind before (days, default 7)', 'number'],
                ['expiresOn', 'Expires at the provider on', 'date'],
              ] as const
            ).map(([key, text, type]) => (
              <div class="field" key={key}>
                <label for={`kf-${key}`}>{text}</label>
                <input id={`kf-${key}`} type={type} inputMode={type === 'number' ? 'numeric' : undefined} min={type === 'number' ? 0 : undefined}
                  value={policy[key]} aria-invalid={policyCheck.errors[key] || error?.field?.startsWith('rotation_policy') ? true : undefined}
                  aria-describedby={policyCheck.errors[key] ? `kf-${key}-error` : undefined}
                  onInput={(e) => setPolicy((old) => ({ ...old, [key]: e.currentTarget.value }))} />
                {policyCheck.errors[key] && (
                  <p class="error-text" id={`kf-${key}-error`}>
                    {policyCheck.errors[key]}
                  </p>
                )}
              </div>
            ))}
          </fieldset>
        )}

        {mode === 'rotate' && (
          <div class="field">
            <label for="kf-grace">Grace period for the old key (hours, 0–720)</label>
            <input id="kf-grace" type="number" inputMode="numeric" min={0} max={720} step={1} value={graceHours}
              aria-invalid={!graceValid || error?.field === 'grace_hours' || undefined}
              onInput={(e) => setGraceHours(e.currentTarget.value)} />
          </div>
        )}

        {provider.test?.cost_note && <p class="help">Test connection: {provider.test.cost_note}</p>}

        <div aria-live="polite">
          {busy === 'test' && <p class="muted">Testing connection…</p>}
          {test && <TestResultView result={test} />}
          {notice && (
            <p class="notice notice-ok" role="status">
              {notice}
            </p>
          )}
          {warnings.length > 0 && <p class="warning-text">Saved with warnings: {warnings.join(' ')}</p>}
        </div>
        {error && (
          <p class="error-text" role="alert">
            {error.message}
          </p>
        )}

        <div class="actions">
          {mode !== 'rotate' && (
            <button type="button" onClick={runTest} disabled={busy !== null || (!canTestCandidate && !canTestStored)}>
              Test Connection
            </button>
          )}
          <span class="spacer" />
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          {mode === 'create' && (
            <button type="button" onClick={() => void save(true)} disabled={!canSave}>
              Save and Add Another
            </button>
          )}
          <button type="submit" class="primary" disabled={!canSave}>
            {busy === 'save' ? 'Saving…' : mode === 'rotate' ? 'Rotate' : 'Save'}
          </button>
        </div>
      </form>
    </Modal>
  );
}
