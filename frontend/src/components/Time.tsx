import { exactTime, relativeTime } from '../format';

/** Relative time ("3 minutes ago") with the exact time in `datetime` and the tooltip. */
export function Time({ value, empty = 'never' }: { value?: string | null; empty?: string }) {
  if (!value) return <span class="muted">{empty}</span>;
  return (
    <time dateTime={value} title={exactTime(value)}>
      {relativeTime(value)}
    </time>
  );
}
