//! The embedded backend: one SQLite file (WAL) and a local master key.

mod admission_writer;
mod checkpointer;
pub mod local_vault;
pub mod secret_file;
mod sqlite_jobs;
mod sqlite_metering;
pub mod sqlite_store;

pub use local_vault::LocalVault;
pub use sqlite_store::SqliteStore;
