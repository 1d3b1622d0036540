import type { Session } from '../auth';

export function Header({ session, onSignOut }: { session: Session; onSignOut: () => void }) {
  return (
    <header class="page-header">
      <div class="header-top">
        <div>
          <h1>API Key Management</h1>
          <p class="lead">
            Keys are stored encrypted on the server, are never shown again after you save them, and are used only through the StockPulse backend
            proxy — never sent to your browser.
          </p>
        </div>
        <div class="account">
          <span class="account-who">
            {session.email} · <span class="role-badge">{session.role}</span> · workspace <strong>{session.workspace}</strong>
          </span>
          <button type="button" onClick={onSignOut}>
            Sign out
          </button>
        </div>
      </div>
      <aside class="notice" aria-labelledby="security-notice-title">
        <h2 id="security-notice-title">Security best practices</h2>
        <ul>
          <li>Create keys with the least privilege the provider allows (read-only where possible).</li>
          <li>Use separate keys for production and development.</li>
          <li>Rotate keys regularly.</li>
          <li>If a key leaks, revoke it here at once and at the provider.</li>
          <li>Never paste keys into chats, tickets, e-mails or code.</li>
        </ul>
        <p>
          <a href="/docs/index.html">User guide</a>
        </p>
      </aside>
    </header>
  );
}
