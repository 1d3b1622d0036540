import { useState } from 'preact/hooks';
import { ApiError } from '../api';
import { Modal } from './Modal';

/** Asks a reason, then revokes. */
export function RevokeDialog({ what, onConfirm, onClose }: { what: string; onConfirm: (reason: string) => Promise<void>; onClose: () => void }) {
  const [reason, setReason] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await onConfirm(reason.trim());
    } catch (err) {
      setError(err instanceof ApiError ? err.message : 'Revoking failed.');
      setBusy(false);
    }
  };
  return (
    <Modal title={`Revoke ${what}`} onClose={onClose} role="alertdialog">
      <form class="form" onSubmit={submit} noValidate>
        <p>
          The key stops working through StockPulse at once. Also revoke it at the provider if it may have leaked. This cannot be undone: to use the
          provider again, add a new key.
        </p>
        <div class="field">
          <label for="revoke-reason">Reason (required)</label>
          <textarea id="revoke-reason" rows={3} maxLength={500} required value={reason} data-autofocus onInput={(e) => setReason(e.currentTarget.value)} />
        </div>
        {error && (
          <p class="error-text" role="alert">
            {error}
          </p>
        )}
        <div class="actions">
          <span class="spacer" />
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="danger-solid" disabled={busy || reason.trim() === ''}>
            Revoke key
          </button>
        </div>
      </form>
    </Modal>
  );
}

export function DeleteDialog({ what, onConfirm, onClose }: { what: string; onConfirm: () => Promise<void>; onClose: () => void }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const confirm = async () => {
    setBusy(true);
    setError(null);
    try {
      await onConfirm();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : 'Deleting failed.');
      setBusy(false);
    }
  };
  return (
    <Modal title={`Delete ${what}?`} onClose={onClose} role="alertdialog">
      <p>The stored key and its versions are deleted for good. The audit log keeps a record of the deletion.</p>
      {error && (
        <p class="error-text" role="alert">
          {error}
        </p>
      )}
      <div class="actions">
        <span class="spacer" />
        <button type="button" onClick={onClose} data-autofocus>
          Cancel
        </button>
        <button type="button" class="danger-solid" disabled={busy} onClick={confirm}>
          Delete key
        </button>
      </div>
    </Modal>
  );
}
