import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, type AuditEntry, type Provider } from '../api';
import { exactTime, toCsv } from '../format';
import { Time } from './Time';

// Exactly the API's actions (`action::ALL` in shared/src/domain/audit.rs; a Rust test compares
// the two): a filter the API does not know answers 400.
const ACTIONS = [
  'key.create',
  'key.update',
  'key.delete',
  'key.test',
  'key.test_candidate',
  'key.invalidated',
  'key.revoke',
  'quota.update',
  'quota.threshold',
  'cache.purge',
  'key.rotate.stage',
  'key.rotate.test',
  'key.rotate.promote',
  'key.rotate.discard',
  'key.rollback',
  'key.previous.destroy',
  'key.reminder',
  'key.release',
  'proxy.call',
];
const CSV_COLUMNS = ['seq', 'time', 'actor_email', 'role', 'action', 'provider', 'environment', 'key_id', 'outcome', 'source_ip', 'user_agent', 'request_id', 'fingerprint', 'detail'];

interface Filters {
  action: string;
  provider: string;
  actor: string;
  from: string;
  to: string;
}

function nextDay(day: string): string {
  return new Date(new Date(`${day}T00:00:00Z`).getTime() + 86400000).toISOString();
}

export function AuditView({ providers }: { providers: Provider[] }) {
  const [filters, setFilters] = useState<Filters>({ action: '', provider: '', actor: '', from: '', to: '' });
  const [items, setItems] = useState<AuditEntry[] | null>(null);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const params = (f: Filters) => ({
    action: f.action.trim(),
    provider: f.provider,
    actor: f.actor.trim(),
    from: f.from ? `${f.from}T00:00:00Z` : undefined,
    to: f.to ? nextDay(f.to) : undefined,
    limit: 100,
  });

  const load = async (more: boolean) => {
    setBusy(true);
    setError(null);
    try {
      const { data } = await api.audit({ ...params(filters), cursor: more ? (cursor ?? undefined) : undefined });
      setItems((old) => (more && old ? [...old, ...data.items] : data.items));
      setCursor(data.next_cursor ?? null);
    } catch (e) {
      setError(e instanceof ApiError ? e.message : 'Could not load the audit log.');
    } finally {
      setBusy(false);
    }
  };
  useEffect(() => {
    void load(false);
  }, []);

  const set = (k: keyof Filters) => (e: Event) => setFilters((f) => ({ ...f, [k]: (e.currentTarget as HTMLInputElement).value }));

  const exportCsv = () => {
    if (!items) return;
    const csv = toCsv(CSV_COLUMNS, items as unknown as Record<string, unknown>[]);
    const url = URL.createObjectURL(new Blob([csv], { type: 'text/csv;charset=utf-8' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = `audit-${new Date().toISOString().slice(0, 19).replace(/:/g, '')}.csv`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };

  return (
    <section aria-labelledby="audit-title">
      <h2 id="audit-title">Audit log</h2>
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          void load(false);
        }}
      >
        <div class="field">
          <label for="audit-action">Action</label>
          <input id="audit-action" type="text" list="audit-actions" value={filters.action} onInput={set('action')} />
          <datalist id="audit-actions">
            {ACTIONS.map((a) => (
              <option key={a} value={a} />
            ))}
          </datalist>
        </div>
        <div class="field">
          <label for="audit-provider">Provider</label>
          <select id="audit-provider" value={filters.provider} onChange={set('provider')}>
            <option value="">All providers</option>
            {providers.map((p) => (
              <option key={p.id} value={p.id}>
                {p.name}
              </option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="audit-actor">Actor (email)</label>
          <input id="audit-actor" type="text" value={filters.actor} onInput={set('actor')} />
        </div>
        <div class="field">
          <label for="audit-from">From</label>
          <input id="audit-from" type="date" value={filters.from} onChange={set('from')} />
        </div>
        <div class="field">
          <label for="audit-to">To</label>
          <input id="audit-to" type="date" value={filters.to} onChange={set('to')} />
        </div>
        <div class="filter-actions">
          <button type="submit" class="primary" disabled={busy}>
            Apply filters
          </button>
          <button type="button" onClick={exportCsv} disabled={!items || items.length === 0}>
            Export CSV
          </button>
        </div>
      </form>
      {error && (
        <p class="notice notice-error" role="alert">
          {error}
        </p>
      )}
      {items === null ? (
        <p class="muted">Loading…</p>
      ) : items.length === 0 ? (
        <p class="muted">No audit entries match.</p>
      ) : (
        <div class="table-wrap" tabIndex={0} role="region" aria-label="Audit entries">
          <table class="audit">
            <thead>
              <tr>
                <th scope="col">Time</th>
                <th scope="col">Actor</th>
                <th scope="col">Action</th>
                <th scope="col">Provider</th>
                <th scope="col">Environment</th>
                <th scope="col">Outcome</th>
                <th scope="col">Source IP</th>
                <th scope="col">Detail</th>
              </tr>
            </thead>
            <tbody>
              {items.map((e) => (
                <tr key={e.seq}>
                  <td>
                    <Time value={e.time} />
                    <span class="visually-hidden"> ({exactTime(e.time)})</span>
                  </td>
                  <td>
                    {e.actor_email} <span class="muted">({e.role})</span>
                  </td>
                  <td>
                    <code>{e.action}</code>
                  </td>
                  <td>{e.provider ?? '—'}</td>
                  <td>{e.environment ?? '—'}</td>
                  <td class={`outcome outcome-${e.outcome}`}>{e.outcome}</td>
                  <td>{e.source_ip ?? ''}</td>
                  <td>{typeof e.detail === 'string' ? e.detail : e.detail ? JSON.stringify(e.detail) : ''}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {cursor && (
        <button type="button" onClick={() => void load(true)} disabled={busy}>
          Load more
        </button>
      )}
    </section>
  );
}
