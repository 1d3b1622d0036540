import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, type Notification, type Provider } from '../api';
import { environmentLabel, humanize } from '../format';
import { Time } from './Time';

export function NotificationsView({ providers }: { providers: Provider[] }) {
  const [items, setItems] = useState<Notification[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const name = (id?: string | null) => providers.find((p) => p.id === id)?.name ?? id ?? '';

  const load = async () => {
    try {
      setItems((await api.notifications()).data.items);
    } catch (e) {
      setError(e instanceof ApiError ? e.message : 'Could not load notifications.');
    }
  };
  useEffect(() => {
    void load();
  }, []);

  const markRead = async (id: string) => {
    try {
      await api.markRead(id);
      setItems((list) => list?.map((n) => (n.id === id ? { ...n, read_at: new Date().toISOString() } : n)) ?? null);
    } catch (e) {
      setError(e instanceof ApiError ? e.message : 'Could not mark as read.');
    }
  };

  return (
    <section aria-labelledby="notifications-title">
      <h2 id="notifications-title">Notifications</h2>
      {error && (
        <p class="notice notice-error" role="alert">
          {error}
        </p>
      )}
      {items === null ? (
        <p class="muted">Loading…</p>
      ) : items.length === 0 ? (
        <p class="muted">No notifications.</p>
      ) : (
        <ul class="notifications">
          {items.map((n) => (
            <li key={n.id} class={n.read_at ? 'read' : 'unread'}>
              <div>
                <strong>{n.read_at ? '' : 'New: '}{humanize(n.kind)}</strong>
                {n.provider && <span> · {name(n.provider)}</span>}
                {n.environment && <span> · {environmentLabel(n.environment)}</span>} · <Time value={n.created_at} />
              </div>
              <p>{n.message}</p>
              {!n.read_at && (
                <button type="button" aria-label={`Mark as read: ${n.message}`} onClick={() => void markRead(n.id)}>
                  Mark as read
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
