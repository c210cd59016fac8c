//! The gRPC edge: the client-facing `ChiefOfStateService`, the client of the application's write handler, the
//! metadata (header) rules, and the one table that maps internal errors to `tonic::Status`.

pub mod breaker;
pub mod connection;
pub mod error;
pub mod h2_channel;
pub mod headers;
pub mod http;
pub mod http_handler;
pub mod manager;
pub mod service;
pub mod write_handler;

pub use service::ChiefOfState;
pub use write_handler::WriteHandler;
