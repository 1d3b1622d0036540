import { quotaPercent, quotaState, formatNumber } from '../format';

export interface Point {
  label: string;
  value: number;
}

/** Inline SVG bar chart (SVG attributes only: no inline CSS, so it passes style-src 'self'). */
export function BarChart({ title, points, unit = '', max, format = formatNumber, tone = 'primary' }: {
  title: string;
  points: Point[];
  unit?: string;
  max?: number;
  format?: (n: number) => string;
  tone?: 'primary' | 'danger' | 'ok' | 'accent';
}) {
  const width = 600;
  const height = 160;
  const pad = { top: 10, right: 8, bottom: 22, left: 44 };
  const innerW = width - pad.left - pad.right;
  const innerH = height - pad.top - pad.bottom;
  const top = Math.max(max ?? 0, ...points.map((p) => p.value), 1);
  const slot = points.length > 0 ? innerW / points.length : innerW;
  const barW = Math.max(1, slot * 0.7);
  const total = points.reduce((s, p) => s + p.value, 0);
  const summary =
    points.length === 0
      ? `${title}: no data`
      : `${title}: ${points.length} days, highest ${format(Math.max(...points.map((p) => p.value)))}${unit}, total ${format(total)}${unit}`;
  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label={summary} class={`chart-svg tone-${tone}`} preserveAspectRatio="none">
        <line x1={pad.left} y1={pad.top + innerH} x2={width - pad.right} y2={pad.top + innerH} class="axis" />
        <text x={pad.left - 6} y={pad.top + 8} text-anchor="end" class="tick">
          {format(top)}
        </text>
        <text x={pad.left - 6} y={pad.top + innerH} text-anchor="end" class="tick">
          0
        </text>
        {points.map((p, i) => {
          const h = (p.value / top) * innerH;
          const x = pad.left + i * slot + (slot - barW) / 2;
          return (
            <rect key={p.label} x={x} y={pad.top + innerH - h} width={barW} height={Math.max(h, p.value > 0 ? 1 : 0)} class="bar">
              <title>{`${p.label}: ${format(p.value)}${unit}`}</title>
            </rect>
          );
        })}
        {points.length > 0 && (
          <>
            <text x={pad.left} y={height - 6} class="tick">
              {points[0].label}
            </text>
            <text x={width - pad.right} y={height - 6} text-anchor="end" class="tick">
              {points[points.length - 1].label}
            </text>
          </>
        )}
      </svg>
      {points.length === 0 && <p class="muted">No usage recorded in this period.</p>}
    </figure>
  );
}

const STATE_TEXT = { ok: 'OK', warning: 'Warning: 80% or more used', reached: 'Limit reached', unlimited: 'No limit' };

/** used/limit bar with distinct 80 % (warning) and 100 % (reached) states, in text and color. */
export function QuotaBar({ label, used, limit }: { label: string; used: number; limit: number | null | undefined }) {
  const state = quotaState(used, limit);
  const percent = quotaPercent(used, limit);
  const text = limit ? `${formatNumber(used)} of ${formatNumber(limit)} (${Math.round((used / limit) * 100)}%)` : `${formatNumber(used)} used, no limit`;
  return (
    <div class={`quota quota-${state}`}>
      <div class="quota-label">
        <span>{label}</span>
        <span>
          {text} — <strong>{STATE_TEXT[state]}</strong>
        </span>
      </div>
      <svg viewBox="0 0 100 8" preserveAspectRatio="none" class="quota-svg" role="img" aria-label={`${label}: ${text}, ${STATE_TEXT[state]}`}>
        <rect x="0" y="0" width="100" height="8" rx="2" class="quota-track" />
        <rect x="0" y="0" width={percent} height="8" rx="2" class="quota-fill" />
        <line x1="80" y1="0" x2="80" y2="8" class="quota-mark" />
      </svg>
    </div>
  );
}
