//! Adapters: implementations of the ports. `embedded` runs with no cloud account (SQLite, a local
//! master key); `upstream` talks to providers over HTTPS.

pub mod aws;
pub mod embedded;
pub mod sealing;
pub mod upstream;
