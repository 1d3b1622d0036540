import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, type Environment, type KeyRecord, type LimitKind, type Provider, type QuotaView, type UsageReport } from '../api';
import { environmentLabel, formatNumber, formatPercent } from '../format';
import { BarChart, QuotaBar, type Point } from './Charts';

const LIMITS: { kind: LimitKind; label: string; used: keyof QuotaView['environments'][number]['used'] }[] = [
  { kind: 'requests_per_minute', label: 'Requests this minute', used: 'requests_this_minute' },
  { kind: 'requests_per_day', label: 'Requests today', used: 'requests_today' },
  { kind: 'requests_per_month', label: 'Requests this month', used: 'requests_this_month' },
  { kind: 'llm_tokens_per_month', label: 'LLM tokens this month', used: 'llm_tokens_this_month' },
];

function isoDay(d: Date): string {
  return d.toISOString().slice(0, 10);
}

function daysBetween(from: string, to: string): string[] {
  const out: string[] = [];
  const end = new Date(`${to}T00:00:00Z`).getTime();
  for (let t = new Date(`${from}T00:00:00Z`).getTime(); t <= end && out.length < 400; t += 86400000) out.push(isoDay(new Date(t)));
  return out;
}

export function UsageView({ providers, keys }: { providers: Provider[]; keys: KeyRecord[] }) {
  const configured = providers.filter((p) => keys.some((k) => k.provider === p.id));
  const [providerId, setProviderId] = useState((configured[0] ?? providers[0])?.id ?? '');
  const [environment, setEnvironment] = useState<Environment>('production');
  const [to, setTo] = useState(isoDay(new Date()));
  const [from, setFrom] = useState(isoDay(new Date(Date.now() - 29 * 86400000)));
  const [usage, setUsage] = useState<UsageReport | null>(null);
  const [quota, setQuota] = useState<QuotaView | null>(null);
  const [error, setError] = useState<string | null>(null);
  const provider = providers.find((p) => p.id === providerId);

  useEffect(() => {
    if (!providerId) return;
    let live = true;
    setError(null);
    Promise.all([api.usage({ provider: providerId, from, to }), api.quotas(providerId)])
      .then(([u, q]) => {
        if (!live) return;
        setUsage(u.data);
        setQuota(q.data);
      })
      .catch((e) => live && setError(e instanceof ApiError ? e.message : 'Could not load usage.'));
    return () => {
      live = false;
    };
  }, [providerId, from, to]);

  const days = from <= to ? daysBetween(from, to) : [];
  const byDay = new Map((usage?.days ?? []).filter((d) => d.environment === environment).map((d) => [d.day, d]));
  const series = (pick: (d: NonNullable<ReturnType<typeof byDay.get>>) => number): Point[] =>
    days.map((day) => {
      const d = byDay.get(day);
      return { label: day, value: d ? pick(d) : 0 };
    });
  const total = usage?.totals.find((t) => t.environment === environment);
  const envQuota = quota?.environments.find((q) => q.environment === environment);

  return (
    <section aria-labelledby="usage-title">
      <h2 id="usage-title">Usage &amp; quotas</h2>
      <div class="filters">
        <div class="field">
          <label for="usage-provider">Provider</label>
          <select id="usage-provider" value={providerId} onChange={(e) => setProviderId(e.currentTarget.value)}>
            {providers.map((p) => (
              <option key={p.id} value={p.id}>
                {p.name}
              </option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="usage-environment">Environment</label>
          <select id="usage-environment" value={environment} onChange={(e) => setEnvironment(e.currentTarget.value as Environment)}>
            <option value="production">Production</option>
            <option value="development">Development</option>
          </select>
        </div>
        <div class="field">
          <label for="usage-from">From</label>
          <input id="usage-from" type="date" value={from} max={to} onChange={(e) => e.currentTarget.value && setFrom(e.currentTarget.value)} />
        </div>
        <div class="field">
          <label for="usage-to">To</label>
          <input id="usage-to" type="date" value={to} min={from} onChange={(e) => e.currentTarget.value && setTo(e.currentTarget.value)} />
        </div>
      </div>
      {error && (
        <p class="notice notice-error" role="alert">
          {error}
        </p>
      )}

      <h3>Quotas — {provider?.name} {environmentLabel(environment)}</h3>
      {envQuota ? (
        <div class="quotas">
          {LIMITS.filter((l) => envQuota.limits[l.kind] != null).map((l) => (
            <QuotaBar key={l.kind} label={l.label} used={envQuota.used[l.used]} limit={envQuota.limits[l.kind]} />
          ))}
          {LIMITS.every((l) => envQuota.limits[l.kind] == null) && <p class="muted">No limits set for this environment.</p>}
          <p class="help">{envQuota.custom ? 'Limits set by this workspace.' : "The provider's published default limits apply."}</p>
        </div>
      ) : (
        <p class="muted">{quota ? 'No quota information for this environment.' : 'Loading…'}</p>
      )}

      {total && (
        <dl class="totals">
          <div><dt>Requests</dt><dd>{formatNumber(total.requests)}</dd></div>
          <div><dt>Cache hits</dt><dd>{formatNumber(total.cache_hits)}</dd></div>
          <div><dt>Cache hit rate</dt><dd>{formatPercent(total.cache_hit_rate)}</dd></div>
          <div><dt>Errors</dt><dd>{formatNumber(total.auth_errors + total.client_errors + total.server_errors + total.network_errors)}</dd></div>
          <div><dt>Rate limited</dt><dd>{formatNumber(total.rate_limited)}</dd></div>
          <div><dt>Latency p50 / p95</dt><dd>{total.latency_p50_ms ?? '–'} / {total.latency_p95_ms ?? '–'} ms</dd></div>
          {provider?.category === 'llm' && <div><dt>Tokens (in / out)</dt><dd>{formatNumber(total.input_tokens)} / {formatNumber(total.output_tokens)}</dd></div>}
          {total.cost_micro_usd > 0 && <div><dt>Estimated cost</dt><dd>${(total.cost_micro_usd / 1e6).toFixed(2)}</dd></div>}
        </dl>
      )}

      <div class="charts">
        <BarChart title="Requests per day" points={series((d) => d.requests + d.cache_hits)} />
        <BarChart title="Errors per day" tone="danger"
          points={series((d) => d.auth_errors + d.client_errors + d.server_errors + d.network_errors + d.rate_limited)} />
        <BarChart title="Cache hit rate per day" tone="ok" unit="%" max={100} points={series((d) => Math.round((d.cache_hit_rate ?? 0) * 100))} />
        {provider?.category === 'llm' && (
          <BarChart title="LLM tokens per day" tone="accent" points={series((d) => d.input_tokens + d.output_tokens)} />
        )}
      </div>
    </section>
  );
}
