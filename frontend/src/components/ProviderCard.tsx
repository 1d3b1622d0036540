import type { Environment, KeyRecord, Provider, Role, TestResult } from '../api';
import { environmentLabel, statusInfo } from '../format';
import { ProviderLogo } from './Logo';
import { TestResultView } from './TestResultView';
import { Time } from './Time';

export type KeyAction = 'test' | 'edit' | 'rotate' | 'rollback' | 'revoke' | 'delete';

interface Props {
  provider: Provider;
  keys: KeyRecord[];
  role: Role;
  tests: Record<string, TestResult | undefined>;
  busyKey: string | null;
  onAdd: (provider: Provider, environment: Environment) => void;
  onAction: (action: KeyAction, record: KeyRecord, provider: Provider) => void;
}

const ENVS: Environment[] = ['production', 'development'];

export function StatusBadge({ status }: { status?: string | null }) {
  const info = statusInfo(status);
  return (
    <span class={`status status-${info.tone}`}>
      <span class="status-dot" aria-hidden="true" />
      {info.label}
    </span>
  );
}

export function canManage(role: Role, provider: Provider): boolean {
  return role === 'admin' || (role === 'member' && !provider.admin_only);
}

/** The state a provider shows overall: the worst of its keys, or not configured. */
function overallStatus(keys: KeyRecord[]): string | null {
  if (keys.length === 0) return null;
  const order = ['expired', 'invalid', 'rotation_due', 'pending', 'revoked', 'active'];
  for (const s of order) if (keys.some((k) => k.status === s)) return s;
  return keys[0].status;
}

export function ProviderCard({ provider, keys, role, tests, busyKey, onAdd, onAction }: Props) {
  const manage = canManage(role, provider);
  const headingId = `provider-${provider.id}`;
  const freeEnv = ENVS.find((env) => !keys.some((k) => k.environment === env));
  return (
    <section class="card provider" aria-labelledby={headingId}>
      <div class="provider-head">
        <ProviderLogo id={provider.id} name={provider.name} />
        <div class="provider-title">
          <h3 id={headingId}>{provider.name}</h3>
          <div class="badges">
            <StatusBadge status={overallStatus(keys)} />
            {provider.admin_only && <span class="badge badge-admin">Admin only</span>}
          </div>
        </div>
        {manage && freeEnv && (
          <button type="button" class="primary add-key" aria-label={`Add key for ${provider.name}`} onClick={() => onAdd(provider, freeEnv)}>
            Add key
          </button>
        )}
      </div>
      <p class="muted provider-desc">{provider.description}</p>
      {provider.admin_only && role !== 'admin' && <p class="help">Only workspace admins can add or change this provider's keys.</p>}
      <div class="env-list">
        {ENVS.map((env) => {
          const record = keys.find((k) => k.environment === env);
          return (
            <KeyRow
              key={env}
              env={env}
              provider={provider}
              record={record}
              role={role}
              manage={manage}
              test={record ? tests[record.id] : undefined}
              busy={record ? busyKey === record.id : false}
              onAction={onAction}
            />
          );
        })}
      </div>
    </section>
  );
}

function KeyRow({ env, provider, record, role, manage, test, busy, onAction }: {
  env: Environment;
  provider: Provider;
  record?: KeyRecord;
  role: Role;
  manage: boolean;
  test?: TestResult;
  busy: boolean;
  onAction: (action: KeyAction, record: KeyRecord, provider: Provider) => void;
}) {
  const envName = environmentLabel(env);
  if (!record) {
    return (
      <div class="env-row" role="group" aria-label={`${provider.name} ${envName}`}>
        <div class="env-name">{envName}</div>
        <StatusBadge status={null} />
      </div>
    );
  }
  const what = `${provider.name} ${envName} key`;
  const canRollback = !!record.previous && new Date(record.previous.grace_until).getTime() > Date.now();
  const revoked = record.status === 'revoked';
  const button = (action: KeyAction, text: string, extraClass = '') => (
    <button type="button" class={extraClass} aria-label={`${text} ${what}`} disabled={busy} onClick={() => onAction(action, record, provider)}>
      {text}
    </button>
  );
  return (
    <div class="env-row" role="group" aria-label={`${provider.name} ${envName}`}>
      <div class="env-name">{envName}</div>
      <StatusBadge status={record.status} />
      <dl class="key-facts">
        {Object.entries(record.masked).map(([field, masked]) => (
          <div key={field}>
            <dt>{provider.fields.find((f) => f.id === field)?.label ?? field}</dt>
            <dd>
              <code>{masked}</code>
            </dd>
          </div>
        ))}
        <div>
          <dt>Label</dt>
          <dd>{record.label || '—'}</dd>
        </div>
        <div>
          <dt>Last used</dt>
          <dd>
            <Time value={record.last_used_at} />
          </dd>
        </div>
        <div>
          <dt>Last verified</dt>
          <dd>
            <Time value={record.last_verified_at} />
            {record.last_test && <span class="muted"> ({record.last_test.ok ? 'OK' : record.last_test.status})</span>}
          </dd>
        </div>
        {record.rotation_due_at && (
          <div>
            <dt>Rotation due</dt>
            <dd>
              <Time value={record.rotation_due_at} />
            </dd>
          </div>
        )}
        {record.previous && (
          <div>
            <dt>Previous key</dt>
            <dd>
              <code>{Object.values(record.previous.masked)[0]}</code> until <Time value={record.previous.grace_until} />
            </dd>
          </div>
        )}
        {record.revocation && (
          <div>
            <dt>Revoked</dt>
            <dd>
              <Time value={record.revocation.at} /> by {record.revocation.by?.email ?? 'unknown'}: {record.revocation.reason}
            </dd>
          </div>
        )}
      </dl>
      {record.warnings?.length > 0 && <p class="warning-text">Warning: {record.warnings.map((w) => w.message).join(' ')}</p>}
      {test && <TestResultView result={test} />}
      {manage && (
        <div class="key-actions">
          {!revoked && button('test', 'Test')}
          {button('edit', 'Edit')}
          {!revoked && button('rotate', 'Rotate')}
          {canRollback && button('rollback', 'Roll back')}
          {!revoked && button('revoke', 'Revoke', 'danger')}
          {role === 'admin' && button('delete', 'Delete', 'danger')}
        </div>
      )}
    </div>
  );
}
