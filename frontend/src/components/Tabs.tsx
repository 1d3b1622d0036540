import type { ComponentChildren } from 'preact';
import { useRef } from 'preact/hooks';

export interface TabItem {
  id: string;
  label: string;
}

/** WAI-ARIA tabs with automatic activation: Left/Right (wrapping), Home, End. */
export function Tabs({ idPrefix, label, items, selected, onSelect, children }: {
  idPrefix: string;
  label: string;
  items: TabItem[];
  selected: string;
  onSelect: (id: string) => void;
  children: ComponentChildren;
}) {
  const refs = useRef<Record<string, HTMLButtonElement | null>>({});
  const onKeyDown = (e: KeyboardEvent) => {
    const index = items.findIndex((t) => t.id === selected);
    let next = -1;
    if (e.key === 'ArrowRight') next = (index + 1) % items.length;
    else if (e.key === 'ArrowLeft') next = (index - 1 + items.length) % items.length;
    else if (e.key === 'Home') next = 0;
    else if (e.key === 'End') next = items.length - 1;
    if (next < 0) return;
    e.preventDefault();
    const id = items[next].id;
    onSelect(id);
    refs.current[id]?.focus();
  };
  return (
    <div class="tabs">
      <div role="tablist" aria-label={label} class="tablist" onKeyDown={onKeyDown}>
        {items.map((t) => (
          <button
            key={t.id}
            ref={(el) => {
              refs.current[t.id] = el;
            }}
            type="button"
            role="tab"
            id={`${idPrefix}-tab-${t.id}`}
            aria-selected={t.id === selected}
            aria-controls={`${idPrefix}-panel`}
            tabIndex={t.id === selected ? 0 : -1}
            onClick={() => onSelect(t.id)}
          >
            {t.label}
          </button>
        ))}
      </div>
      <div role="tabpanel" id={`${idPrefix}-panel`} aria-labelledby={`${idPrefix}-tab-${selected}`} tabIndex={0} class="tabpanel">
        {children}
      </div>
    </div>
  );
}
