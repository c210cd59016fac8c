//! The `regent` command line (clap): run a node, run the bundled example handler, talk to a node.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod admin;
pub mod readside;

use crate::config::{Backend, Overrides};

/// Regent: a clustered event-sourcing node, a drop-in implementation of Chief of State.
#[derive(Debug, Parser)]
#[command(name = "regent", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: serve `chief_of_state.v1.ChiefOfStateService` on COS_ADDRESS:COS_PORT.
    Start(StartArgs),
    /// Run the bundled bank-account write handler on its own.
    ExampleHandler(ExampleHandlerArgs),
    /// Send commands of the bundled bank-account example to a node and print the state it answers.
    #[command(subcommand)]
    Bank(BankCommand),
    /// Print an entity's current state (any domain): revision, date, type and size of the state.
    GetState(GetStateArgs),
    /// Inspect and steer read sides (needs COS_READ_SIDE_ENABLED=true on the node).
    ///
    /// Exit codes: 0 done, 1 the node refused or failed (the message says why), 2 bad usage.
    #[command(subcommand)]
    Readside(ReadsideCommand),
    /// Ask a node's admin endpoint: liveness, readiness, the cluster as it sees it, its actor tree.
    ///
    /// Exit codes: 0 done (and, for `ready`, ready), 1 failed or not ready, 2 bad usage.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// `/health`: whether the node's process serves.
    Health(AdminNodeArg),
    /// `/ready`: whether the node takes traffic, and if not why.
    Ready(AdminNodeArg),
    /// `/cluster`: the members, leader, coordinator and oldest member, and where each shard lives.
    Cluster(AdminNodeArg),
    /// `/actors`: the node's actor tree (region → shards → entities, read sides), with counts per kind.
    Actors {
        /// Entities listed at most per shard (the counts include the others).
        #[arg(long, default_value_t = crate::admin::actors::DEFAULT_MAX_ENTITIES)]
        max_entities: usize,
        #[command(flatten)]
        node: AdminNodeArg,
    },
}

#[derive(Debug, Args)]
pub struct AdminNodeArg {
    /// The node's admin endpoint: `host:port` or `http://host:port`.
    #[arg(long, default_value = "127.0.0.1:8558", env = "REGENT_ADMIN_NODE")]
    pub node: String,
    /// The node's admin token (`admin.token`), sent as `Authorization: Bearer`; prefer the environment variable
    /// to the flag (a flag shows in the process list).
    #[arg(long, env = "REGENT_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl AdminNodeArg {
    /// The token, when one was given.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }
}

#[derive(Debug, Subcommand)]
pub enum ReadsideCommand {
    /// Every read side (or one) per shard: offset, status, last error, events delivered.
    List {
        /// Only this read side.
        read_side_id: Option<String>,
        #[command(flatten)]
        node: NodeArg,
    },
    /// The stored offset of a read side in each shard (or one).
    Offsets(ReadsideTarget),
    /// Pause a read side in every shard (or one).
    Pause(ReadsideTarget),
    /// Resume a paused or stopped read side in every shard (or one).
    Resume(ReadsideTarget),
    /// Forget a read side's offsets: it replays its shards from the beginning of the journal.
    Restart(ReadsideTarget),
    /// Skip the event a read side is stuck on (or its next event) in every shard (or one).
    Skip(ReadsideTarget),
}

#[derive(Debug, Args)]
pub struct ReadsideTarget {
    pub read_side_id: String,
    /// Only this shard.
    #[arg(long)]
    pub shard: Option<u64>,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// TOML configuration file (see config/regent.example.toml); environment variables override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub dump_config: bool,
    /// Also run the bundled bank-account write handler in this process and use it as the write handler.
    #[arg(long)]
    pub example_handler: bool,
    /// gRPC listen address (COS_ADDRESS).
    #[arg(long)]
    pub address: Option<String>,
    /// gRPC listen port (COS_PORT); 0 picks a free port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Store backend (REGENT_STORE_BACKEND).
    #[arg(long, value_enum)]
    pub store: Option<StoreArg>,
    /// Folder of the embedded store (REGENT_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Write handler host (COS_WRITE_SIDE_HOST).
    #[arg(long)]
    pub write_side_host: Option<String>,
    /// Write handler port (COS_WRITE_SIDE_PORT).
    #[arg(long)]
    pub write_side_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StoreArg {
    Sqlite,
    Postgres,
}

impl StartArgs {
    /// The flags that override the configuration file and environment.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            address: self.address.clone(),
            port: self.port,
            data_dir: self.data_dir.clone(),
            backend: self.store.map(|s| match s {
                StoreArg::Sqlite => Backend::Sqlite,
                StoreArg::Postgres => Backend::Postgres,
            }),
            write_side_host: self.write_side_host.clone(),
            write_side_port: self.write_side_port,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExampleHandlerArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Listen port.
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
}

#[derive(Debug, Args)]
pub struct NodeArg {
    /// The node's gRPC endpoint.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9000", env = "REGENT_NODE")]
    pub node: String,
}

#[derive(Debug, Subcommand)]
pub enum BankCommand {
    /// Open an account.
    Open {
        account: String,
        #[arg(long)]
        owner: String,
        #[arg(long, default_value_t = 0)]
        balance: i64,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Deposit into an account.
    Deposit {
        account: String,
        amount: i64,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Withdraw from an account.
    Withdraw {
        account: String,
        amount: i64,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Show an account.
    Get {
        account: String,
        #[command(flatten)]
        node: NodeArg,
    },
}

#[derive(Debug, Args)]
pub struct GetStateArgs {
    pub entity_id: String,
    #[command(flatten)]
    pub node: NodeArg,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
