//! Services: the operations of the product, written against ports only.

pub mod audit;
pub mod connection_test;
pub mod consistency;
pub mod cursor;
pub mod error;
pub mod keys;
pub mod metering;
pub mod rotation;
pub mod scheduler;
pub mod upstreams;

pub use error::ServiceError;
pub mod proxy;
