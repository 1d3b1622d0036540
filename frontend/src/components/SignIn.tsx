import { useState } from 'preact/hooks';
import { ApiError, type Role } from '../api';
import { devSignIn, DevSignInUnavailable, type AuthConfig, type Session } from '../auth';

export function SignIn({ config, onSignedIn }: { config: AuthConfig | null; onSignedIn: (s: Session) => void }) {
  const [email, setEmail] = useState('');
  const [role, setRole] = useState<Role>('admin');
  const [workspace, setWorkspace] = useState('demo');
  const [error, setError] = useState<{ message: string; field?: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const [unavailable, setUnavailable] = useState(false);

  if (config?.mode === 'cognito' || unavailable) {
    return (
      <main class="signin">
        <h1>API Key Management</h1>
        <p role="alert" class="notice notice-warn">
          Sign-in on this deployment goes through its Cognito user pool, which this version of the web app does not support yet. Dev sign-in is
          only available when the local gateway runs in dev mode.
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
