import type { ComponentChildren } from 'preact';
import { useEffect, useRef } from 'preact/hooks';

let nextId = 0;

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

interface Props {
  title: ComponentChildren;
  /** plain-text accessible name when `title` holds markup */
  onClose: () => void;
  children: ComponentChildren;
  role?: 'dialog' | 'alertdialog';
  wide?: boolean;
}

/** A modal dialog: labelled by its heading, traps Tab, closes on Escape and gives focus back
 *  to whatever had it when it opened (the button that opened it). */
export function Modal({ title, onClose, children, role = 'dialog', wide }: Props) {
  const ref = useRef<HTMLDivElement>(null);
  const idRef = useRef(`dialog-title-${++nextId}`);
  const closeRef = useRef(onClose);
  closeRef.current = onClose;

  useEffect(() => {
    const opener = document.activeElement as HTMLElement | null;
    const node = ref.current;
    const first = node?.querySelector<HTMLElement>('[data-autofocus]') ?? node?.querySelector<HTMLElement>(FOCUSABLE);
    (first ?? node)?.focus();
    const onKey = (e: KeyboardEvent) => {
      if (!node) return;
      if (e.key === 'Escape') {
        e.preventDefault();
        e.stopPropagation();
        closeRef.current();
        return;
      }
      if (e.key !== 'Tab') return;
      const items = Array.from(node.querySelectorAll<HTMLElement>(FOCUSABLE)).filter((el) => el.offsetParent !== null || el === document.activeElement);
      if (items.length === 0) {
        e.preventDefault();
        return;
      }
      const firstItem = items[0];
      const lastItem = items[items.length - 1];
      const active = document.activeElement;
      if (e.shiftKey && (active === firstItem || !node.contains(active))) {
        e.preventDefault();
        lastItem.focus();
      } else if (!e.shiftKey && (active === lastItem || !node.contains(active))) {
        e.preventDefault();
        firstItem.focus();
      }
    };
    document.addEventListener('keydown', onKey, true);
    document.body.classList.add('modal-open');
    return () => {
      document.removeEventListener('keydown', onKey, true);
      document.body.classList.remove('modal-open');
      if (opener && document.contains(opener)) opener.focus();
    };
  }, []);

  return (
    <div class="modal-backdrop">
      <div
        ref={ref}
        class={wide ? 'modal modal-wide' : 'modal'}
        role={role}
        aria-modal="true"
        aria-labelledby={idRef.current}
        tabIndex={-1}
      >
        <div class="modal-head">
          <h2 id={idRef.current}>{title}</h2>
          <button type="button" class="icon-button" aria-label="Close" onClick={() => onClose()}>
            ×
          </button>
        </div>
        {children}
      </div>
    </div>
  );
}
