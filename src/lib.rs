//! # Regent
//!
//! A clustered event-sourcing node: a drop-in Rust implementation of Chief of State's `chief_of_state.v1` API.
//!
//! ## Layout
//! - [`config`]: the one configuration loader (defaults → TOML → environment, with CoS names → flags).
//! - [`proto`]: the generated protobuf messages and gRPC services.
//! - [`persistence`]: journal and snapshot store traits, with PostgreSQL and embedded SQLite backends.
pub mod config;
pub mod persistence;
pub mod proto;
