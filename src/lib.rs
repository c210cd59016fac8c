//! # Regent
//!
//! A clustered event-sourcing node: a drop-in Rust implementation of Chief of State's `chief_of_state.v1` API.
//! Applications implement a gRPC write handler (`HandleCommand`, `HandleEvent`); clients call `ProcessCommand`
//! and `GetState`; Regent keeps each entity as an actor and persists its events and snapshots.
//!
//! ## Layout
//! - [`node`]: the composition root: builds a node from its configuration, serves it, shuts it down.
//! - [`engine`]: the store, the actors, read sides and subscriptions of a node, without a server.
//! - [`write_side`]: the write-handler contract (`WriteSide`), gRPC or in process.
//! - [`config`]: the one configuration loader (defaults → TOML → environment, with CoS names → flags).
//! - [`actors`]: the actor tree, `ShardRegion` → `ShardActor` → `EntityActor` (ractor).
//! - [`admin`]: the admin HTTP endpoint (`/health`, `/ready`, `/cluster`, `/actors`, `/readsides`, `/metrics`, the
//!   admin page at `/`) and its client.
//! - [`grpc`]: the client-facing `ChiefOfStateService`, the write-handler client, the error → status table.
//! - [`persistence`]: journal and snapshot store traits, with PostgreSQL and embedded SQLite backends.
//! - [`cluster`]: the PostgreSQL-refereed membership, leases, lease keeper and split-brain rules (not wired into
//!   the node yet: see the cluster issue).
//! - [`example`]: the bundled bank-account write handler used by the quick start.
//! - [`cli`]: the `regent` command line (clap definitions).
//! - [`proto`]: the generated protobuf messages and gRPC services.
//! - [`subscriptions`]: publication of persisted events to `Subscribe` / `SubscribeAll` streams.
//! - [`metrics`]: the Prometheus metric families (`/metrics` on the admin endpoint) and the gRPC metrics layer.
//! - [`telemetry`]: logging, the OTLP trace exporter and W3C trace-context propagation.
//! - [`tls`]: TLS for the client port, the calls to handlers and the node-to-node links.
pub mod actors;
pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod example;
pub mod grpc;
pub mod metrics;
pub mod node;
pub mod persistence;
pub mod proto;
pub mod subscriptions;
pub mod telemetry;
pub mod tls;
pub mod write_side;

pub use node::Node;
