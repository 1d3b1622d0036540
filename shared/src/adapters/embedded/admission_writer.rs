//! Group commit for the proxy's per-request write on SQLite.
//!
//! Every proxied request makes one admission (key check + rate limit + quota + usage). Run one by
//! one, each pays a transaction, a commit (a WAL append of every page it touched) and a hop to a
//! blocking thread. Here one thread owns the writing: it takes every admission waiting when it
//! gets to work, runs each in a savepoint of one transaction (so each stays all or nothing and is
//! judged against the counts of the ones before it) and commits once. Under load many requests
//! share a commit; alone, a request waits for nobody. Verdicts are sent only after the commit.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::sqlite_metering::admit_batch;
use crate::ports::{Admission, StoreError, Verdict};

/// Admissions one commit takes at most (bounds how long the connection stays locked for the
/// store's other work).
const MAX_BATCH: usize = 128;

type Reply = tokio::sync::oneshot::Sender<Result<Verdict, StoreError>>;

pub(super) struct AdmissionWriter {
    queue: Sender<(Admission, Reply)>,
}

impl AdmissionWriter {
    /// Starts the writing thread; it ends when the last handle to this writer is dropped.
    pub(super) fn start(conn: Arc<Mutex<Connection>>) -> Result<AdmissionWriter, StoreError> {
        let (queue, waiting) = channel();
        std::thread::Builder::new()
            .name("sqlite-admissions".into())
            .spawn(move || write_batches(&conn, &waiting))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the admission writer: {e}")))?;
        Ok(AdmissionWriter { queue })
    }

    pub(super) async fn admit(&self, admission: Admission) -> Result<Verdict, StoreError> {
        let stopped = || StoreError::Unavailable("the admission writer has stopped".into());
        let (reply, verdict) = tokio::sync::oneshot::channel();
        self.queue.send((admission, reply)).map_err(|_| stopped())?;
        verdict.await.map_err(|_| stopped())?
    }
}

fn write_batches(conn: &Mutex<Connection>, waiting: &Receiver<(Admission, Reply)>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(next) = waiting.try_recv()
        {
            batch.push(next);
        }
        let admissions: Vec<&Admission> = batch.iter().map(|(admission, _)| admission).collect();
        let verdicts = {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            admit_batch(&mut conn, &admissions)
        };
        for ((_, reply), verdict) in batch.into_iter().zip(verdicts) {
            // The request may have given up waiting; its admission stands either way.
            let _ = reply.send(verdict);
        }
    }
}
