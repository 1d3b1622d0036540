import { useState } from 'preact/hooks';
import { ApiError, type Role } from '../api';
import { devSignIn, DevSignInUnavailable, startCognitoSignIn, type AuthConfig, type Session } from '../auth';

export function SignIn({ config, error: authError, onSignedIn }: { config: AuthConfig | null; error?: string | null; onSignedIn: (s: Session) => void }) {
  const [email, setEmail] = useState('');
  const [role, setRole] = useState<Role>('admin');
  const [workspace, setWorkspace] = useState('demo');
  const [error, setError] = useState<{ message: string; field?: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const [unavailable, setUnavailable] = useState(false);

  if (config?.mode === 'cognito') {
    const settings = config.settings;
    return (
      <main class="signin">
        <h1>API Key Management</h1>
        <p>Sign in with your StockPulse account. Your keys stay on the server; this page never receives them.</p>
        {authError && (
          <p role="alert" class="error-text">
            {authError}
          </p>
        )}
        <button type="button" class="primary" disabled={busy} onClick={() => {
          setBusy(true);
          void startCognitoSignIn(settings);
        }}>
          Sign in
        </button>
      </main>
    );
  }
  if (config?.mode === 'misconfigured' || unavailable) {
    return (
      <main class="signin">
        <h1>API Key Management</h1>
        <p role="alert" class="notice notice-warn">
          {config?.mode === 'misconfigured'
            ? `This deployment's sign-in is not configured correctly: ${config.reason}`
            : "Dev sign-in is off on this server; sign-in goes through the deployment's Cognito user pool (set in /config.json)."}
        </p>
      </main>
    );
  }

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      onSignedIn(await devSignIn(email, role, workspace));
    } catch (err) {
      if (err instanceof DevSignInUnavailable) setUnavailable(true);
      else if (err instanceof ApiError) setError({ message: err.message, field: err.field });
      else setError({ message: 'Sign-in failed.' });
    } finally {
      setBusy(false);
    }
  };

  const invalid = (f: string) => (error?.field === f ? true : undefined);
  return (
    <main class="signin">
      <h1>API Key Management</h1>
      <p>StockPulse Keys — development sign-in (local gateway in dev mode).</p>
      <form class="card form" onSubmit={submit} aria-labelledby="signin-title" noValidate>
        <h2 id="signin-title">Sign in</h2>
        <div class="field">
          <label for="signin-email">Email</label>
          <input id="signin-email" type="email" autocomplete="email" required value={email} aria-invalid={invalid('email')}
            onInput={(e) => setEmail(e.currentTarget.value)} />
        </div>
        <div class="field">
          <label for="signin-role">Role</label>
          <select id="signin-role" value={role} aria-invalid={invalid('role')} onChange={(e) => setRole(e.currentTarget.value as Role)}>
            <option value="admin">Admin</option>
            <option value="member">Member</option>
            <option value="viewer">Viewer</option>
          </select>
        </div>
        <div class="field">
          <label for="signin-workspace">Workspace</label>
          <input id="signin-workspace" type="text" autocomplete="off" required value={workspace} aria-invalid={invalid('workspace')}
            onInput={(e) => setWorkspace(e.currentTarget.value)} />
        </div>
        {error && (
          <p role="alert" class="error-text">
            {error.message}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy || !email.trim() || !workspace.trim()}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
