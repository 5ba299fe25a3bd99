//! What every PIM service shares: configuration, telemetry, database helpers, gRPC serving
//! (health, reflection, TLS, graceful shutdown), token verification, the cached access
//! client, and the event backbone (envelope, outbox, relay, consumers).

pub mod access;
pub mod auth;
pub mod clock;
pub mod config;
pub mod consistency;
pub mod db;
pub mod error;
pub mod events;
pub mod format;
pub mod grpc;
pub mod host;
pub mod listen;
pub mod metrics;
pub mod sealing;
pub mod streams;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod text;
pub mod throttle;

pub use config::Config;
