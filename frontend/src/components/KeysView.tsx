import { useState } from 'preact/hooks';
import { api, ApiError, type Category, type Environment, type KeyRecord, type Provider, type Role, type TestResult } from '../api';
import { environmentLabel } from '../format';
import { DeleteDialog, RevokeDialog } from './ConfirmDialogs';
import { KeyFormModal, type KeyFormMode } from './KeyFormModal';
import { canManage, ProviderCard, type KeyAction } from './ProviderCard';
import { Tabs } from './Tabs';

const CATEGORY_LABELS: Record<string, string> = {
  financial_data: 'Financial Data Providers',
  llm: 'LLM Providers',
  trading: 'Trading APIs',
  other: 'Other Services',
};

type Dialog =
  | { kind: 'form'; mode: KeyFormMode; provider: Provider; environment: Environment; record?: KeyRecord }
  | { kind: 'revoke'; record: KeyRecord; provider: Provider }
  | { kind: 'delete'; record: KeyRecord; provider: Provider }
  | null;

interface Props {
  role: Role;
  categories: Category[];
  keys: KeyRecord[];
  onKeysChanged: () => Promise<void>;
  announce: (message: string, tone?: 'ok' | 'error') => void;
}

export function KeysView({ role, categories, keys, onKeysChanged, announce }: Props) {
  const [selected, setSelected] = useState(categories[0]?.id ?? 'financial_data');
  const [dialog, setDialog] = useState<Dialog>(null);
  const [tests, setTests] = useState<Record<string, TestResult | undefined>>({});
  const [busyKey, setBusyKey] = useState<string | null>(null);

  const category = categories.find((c) => c.id === selected) ?? categories[0];
  const allProviders = categories.flatMap((c) => c.providers).filter((p) => canManage(role, p));
  const what = (record: KeyRecord, provider: Provider) => `${provider.name} ${environmentLabel(record.environment)} key`;

  const simple = async (record: KeyRecord, provider: Provider, run: () => Promise<unknown>, done: string) => {
    setBusyKey(record.id);
    try {
      await run();
      announce(done, 'ok');
      await onKeysChanged();
    } catch (e) {
      announce(`${what(record, provider)}: ${e instanceof ApiError ? e.message : 'the action failed.'}`, 'error');
    } finally {
      setBusyKey(null);
    }
  };

  const onAction = (action: KeyAction, record: KeyRecord, provider: Provider) => {
    switch (action) {
      case 'test':
        void simple(
          record,
          provider,
          async () => {
            const { data } = await api.testKey(record.id);
            setTests((t) => ({ ...t, [record.id]: data }));
            if (!data.ok) throw new ApiError(200, data.status, `test failed: ${data.message}`);
          },
          `${what(record, provider)}: connection works.`,
        );
        break;
      case 'rollback':
        void simple(record, provider, () => api.rollbackKey(record.id), `${what(record, provider)} rolled back to the previous version.`);
        break;
      case 'edit':
      case 'rotate':
        setDialog({ kind: 'form', mode: action, provider, environment: record.environment, record });
        break;
      case 'revoke':
        setDialog({ kind: 'revoke', record, provider });
        break;
      case 'delete':
        setDialog({ kind: 'delete', record, provider });
        break;
    }
  };

  const close = () => setDialog(null);

  return (
    <>
      <Tabs
        idPrefix="category"
        label="Provider categories"
        items={categories.map((c) => ({ id: c.id, label: CATEGORY_LABELS[c.id] ?? c.label }))}
        selected={category?.id ?? ''}
        onSelect={setSelected}
      >
        {category && category.providers.length === 0 && <p class="muted">No providers in this category.</p>}
        <div class="provider-grid">
          {category?.providers.map((p) => (
            <ProviderCard
              key={p.id}
              provider={p}
              keys={keys.filter((k) => k.provider === p.id)}
              role={role}
              tests={tests}
              busyKey={busyKey}
              onAdd={(provider, environment) => setDialog({ kind: 'form', mode: 'create', provider, environment })}
              onAction={onAction}
            />
          ))}
        </div>
      </Tabs>

      {dialog?.kind === 'form' && (
        <KeyFormModal
          key={`${dialog.mode}-${dialog.provider.id}-${dialog.record?.id ?? 'new'}`}
          mode={dialog.mode}
          provider={dialog.provider}
          providers={dialog.mode === 'create' ? allProviders : undefined}
          environment={dialog.environment}
          record={dialog.record}
          existing={keys}
          onClose={close}
          onSaved={(saved, keepOpen) => {
            const verb = dialog.mode === 'create' ? 'saved' : dialog.mode === 'edit' ? 'updated' : 'rotated';
            announce(`${what(saved, dialog.provider)} ${verb}.`, 'ok');
            void onKeysChanged();
            if (!keepOpen) close();
          }}
        />
      )}
      {dialog?.kind === 'revoke' && (
        <RevokeDialog
          what={what(dialog.record, dialog.provider)}
          onClose={close}
          onConfirm={async (reason) => {
            await api.revokeKey(dialog.record.id, reason);
            announce(`${what(dialog.record, dialog.provider)} revoked.`, 'ok');
            close();
            await onKeysChanged();
          }}
        />
      )}
      {dialog?.kind === 'delete' && (
        <DeleteDialog
          what={what(dialog.record, dialog.provider)}
          onClose={close}
          onConfirm={async () => {
            await api.deleteKey(dialog.record.id);
            announce(`${what(dialog.record, dialog.provider)} deleted.`, 'ok');
            close();
            await onKeysChanged();
          }}
        />
      )}
    </>
  );
}
