//! StockPulse Keys: the library every Lambda and the local gateway are built from.
//!
//! Dependencies point one way: `http` (handlers) → `services` (domain operations) → `ports`
//! (traits) ← `adapters`. The `domain` never imports an AWS crate, reqwest or rusqlite.

pub mod adapters;
pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod ports;
pub mod services;
pub mod telemetry;
