// A bundled monogram per provider: initials on a rounded square whose color comes from the id.

function hue(id: string): number {
  let h = 0;
  for (const ch of id) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return h;
}

export function initials(name: string): string {
  const words = name.replace(/[^A-Za-z0-9 ]/g, ' ').split(/\s+/).filter(Boolean);
  if (words.length === 0) return '?';
  if (words.length === 1) return words[0].slice(0, 2).toUpperCase();
  return (words[0][0] + words[1][0]).toUpperCase();
}

export function ProviderLogo({ id, name, size = 40 }: { id: string; name: string; size?: number }) {
  const h = hue(id);
  return (
    <svg class="logo" width={size} height={size} viewBox="0 0 40 40" aria-hidden="true" focusable="false">
      <rect x="0" y="0" width="40" height="40" rx="9" fill={`hsl(${h} 55% 38%)`} />
      <text x="20" y="25.5" text-anchor="middle" font-size="15" font-weight="700" font-family="system-ui, sans-serif" fill="#fff">
        {initials(name)}
      </text>
    </svg>
  );
}
