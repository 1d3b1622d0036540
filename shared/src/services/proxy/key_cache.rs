//! Decrypted keys of this process, for at most a short TTL, so that a warm request needs no
//! vault call. Staleness is never trusted: every request's admission write checks that the key
//! still exists with this material version, and a mismatch evicts the entry and reloads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::environment::Environment;
use crate::domain::keys::KeyRecord;
use crate::domain::redaction::Redactor;
use crate::domain::secret::Credentials;

/// The longest a decrypted key stays in memory.
pub const MAX_KEY_CACHE_TTL: Duration = Duration::from_secs(60);

pub struct ResolvedKey {
    pub record: KeyRecord,
    pub credentials: Credentials,
    /// The spellings of the credentials, computed once per load rather than per answer.
    pub redactor: Redactor,
}

type Slot = (String, String, Environment);

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Slot, (Arc<ResolvedKey>, Instant)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache { ttl: ttl.min(MAX_KEY_CACHE_TTL), entries: Mutex::new(HashMap::new()) }
    }

    pub fn get(&self, workspace: &str, provider: &str, environment: Environment) -> Option<Arc<ResolvedKey>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let slot = (workspace.to_owned(), provider.to_owned(), environment);
        match entries.get(&slot) {
            Some((key, at)) if at.elapsed() < self.ttl => Some(key.clone()),
            Some(_) => {
                entries.remove(&slot);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: Arc<ResolvedKey>) {
        if self.ttl.is_zero() {
            return;
        }
        let slot = (key.record.workspace.clone(), key.record.provider.clone(), key.record.environment);
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).insert(slot, (key, Instant::now()));
    }

    /// Forgets every entry of a key (after a delete, an edit or a refusal by the provider).
    pub fn evict_key(&self, workspace: &str, key_id: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|(ws, _, _), (key, _)| !(ws == workspace && key.record.id == key_id));
    }
}
