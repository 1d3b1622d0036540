import type { TestResult } from '../api';
import { testStatusLabel } from '../format';

export function TestResultView({ result }: { result: TestResult }) {
  return (
    <div class={result.ok ? 'test-result test-ok' : 'test-result test-fail'} role="status">
      <strong>{result.ok ? '✓ Connection works' : '✗ Connection failed'}</strong> — {testStatusLabel(result.status)}
      {result.latency_ms != null && <span> · {result.latency_ms} ms</span>}
      {result.upstream_status != null && <span> · HTTP {result.upstream_status}</span>}
      <div>{result.message}</div>
    </div>
  );
}
