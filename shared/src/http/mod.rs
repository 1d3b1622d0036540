//! The HTTP layer: `http::Request` in, `http::Response` out, so a Lambda main, the local gateway
//! and a test all call the same functions. Errors become the envelope of DESIGN.md §5 here and
//! nowhere else.

pub mod caller;
pub mod dispatch;
pub mod envelope;
pub mod handlers;
pub mod openapi;
pub mod proxy_handlers;
pub mod rotation_handlers;
pub mod routes;

pub use dispatch::{handle_function, route_request, route_request_streaming};
pub use envelope::ApiError;
pub use proxy_handlers::Reply;
