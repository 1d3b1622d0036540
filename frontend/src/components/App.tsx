import { useCallback, useEffect, useState } from 'preact/hooks';
import { api, ApiError, setUnauthorizedHandler, type Category, type KeyRecord } from '../api';
import { cognitoSignOut, completeCognitoSignIn, loadAuthConfig, signOut, type AuthConfig, type Session } from '../auth';
import { AuditView } from './AuditView';
import { Header } from './Header';
import { KeysView } from './KeysView';
import { NotificationsView } from './NotificationsView';
import { SignIn } from './SignIn';
import { Tabs } from './Tabs';
import { UsageView } from './UsageView';

const SECTIONS = [
  { id: 'keys', label: 'Keys' },
  { id: 'usage', label: 'Usage & quotas' },
  { id: 'notifications', label: 'Notifications' },
  { id: 'audit', label: 'Audit log' },
];

export function App() {
  const [config, setConfig] = useState<AuthConfig | null>(null);
  const [session, setSession] = useState<Session | null>(null);
  const [expired, setExpired] = useState(false);
  const [authError, setAuthError] = useState<string | null>(null);

  useEffect(() => {
    void loadAuthConfig().then(async (loaded) => {
      setConfig(loaded);
      if (loaded.mode !== 'cognito') return;
      try {
        const session = await completeCognitoSignIn(loaded.settings);
        if (session) setSession(session);
      } catch (e) {
        setAuthError(e instanceof Error ? e.message : 'Sign-in failed.');
      }
    });
    setUnauthorizedHandler(() => {
      setSession(null);
      setExpired(true);
    });
    return () => setUnauthorizedHandler(null);
  }, []);

  if (!session) {
    return (
      <>
        {expired && (
          <p class="notice notice-warn banner" role="alert">
            Your session ended. Sign in again.
          </p>
        )}
        <SignIn
          config={config}
          error={authError}
          onSignedIn={(s) => {
            setExpired(false);
            setSession(s);
          }}
        />
      </>
    );
  }
  return (
    <Workspace
      session={session}
      onSignOut={() => {
        if (config?.mode === 'cognito') return cognitoSignOut(config.settings);
        signOut();
        setSession(null);
        setExpired(false);
      }}
    />
  );
}

function Workspace({ session, onSignOut }: { session: Session; onSignOut: () => void }) {
  const [section, setSection] = useState('keys');
  const [categories, setCategories] = useState<Category[] | null>(null);
  const [keys, setKeys] = useState<KeyRecord[]>([]);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [message, setMessage] = useState<{ text: string; tone: 'ok' | 'error' } | null>(null);

  const reloadKeys = useCallback(async () => {
    try {
      const { data } = await api.keys();
      setKeys(data.items);
    } catch (e) {
      if (e instanceof ApiError && e.status !== 401) setLoadError(e.message);
    }
  }, []);

  useEffect(() => {
    (async () => {
      try {
        const { data } = await api.providers();
        setCategories(data.categories);
        await reloadKeys();
      } catch (e) {
        if (e instanceof ApiError && e.status !== 401) setLoadError(e.message);
      }
    })();
  }, [reloadKeys]);

  const announce = useCallback((text: string, tone: 'ok' | 'error' = 'ok') => setMessage({ text, tone }), []);
  const providers = categories?.flatMap((c) => c.providers) ?? [];

  return (
    <div class="page">
      <a class="skip-link" href="#main">
        Skip to content
      </a>
      <Header session={session} onSignOut={onSignOut} />
      <main id="main" tabIndex={-1}>
        <div class="live" aria-live="polite" role="status">
          {message && (
            <p class={message.tone === 'ok' ? 'notice notice-ok' : 'notice notice-error'}>
              {message.text}{' '}
              <button type="button" class="link-button" onClick={() => setMessage(null)}>
                Dismiss
              </button>
            </p>
          )}
        </div>
        {loadError && (
          <p class="notice notice-error" role="alert">
            {loadError}
          </p>
        )}
        <Tabs idPrefix="section" label="Sections" items={SECTIONS} selected={section} onSelect={setSection}>
          {section === 'keys' &&
            (categories ? (
              <KeysView role={session.role} categories={categories} keys={keys} onKeysChanged={reloadKeys} announce={announce} />
            ) : (
              <p class="muted">Loading providers…</p>
            ))}
          {section === 'usage' && <UsageView providers={providers} keys={keys} />}
          {section === 'notifications' && <NotificationsView providers={providers} />}
          {section === 'audit' && <AuditView providers={providers} />}
        </Tabs>
      </main>
    </div>
  );
}
