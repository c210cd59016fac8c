//! The `regent` binary: parses the command line, loads the configuration, starts telemetry and calls into the
//! library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use prost_types::Any;
use regent::cli::{BankCommand, Cli, Command, ExampleHandlerArgs, GetStateArgs, StartArgs};
use regent::config::Config;
use regent::example::bank::{self, pack, unpack};
use regent::proto::bank::{BankAccount, Deposit, OpenAccount, Withdraw};
use regent::proto::chief_of_state::v1::chief_of_state_service_client::ChiefOfStateServiceClient;
use regent::proto::chief_of_state::v1::{GetStateRequest, MetaData, ProcessCommandRequest};
use regent::{Node, telemetry};

/// glibc's allocator spends ~15 % of the node's CPU under load (perf, docs/performance.md); mimalloc much less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    regent::tls::install_crypto_provider();
    let outcome = match cli.command {
        Command::Start(args) => start(args).await,
        Command::ExampleHandler(args) => example_handler(args).await,
        Command::Bank(command) => bank_command(command).await,
        Command::GetState(args) => get_state(args).await,
        Command::Readside(command) => regent::cli::readside::run(command).await,
        Command::Admin(command) => regent::cli::admin::run(command).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(args: StartArgs) -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok();
    let mut config = Config::load_with(args.config.as_deref(), &env, &args.overrides())?;
    if args.dump_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let _telemetry = telemetry::init(&config.log, &config.service_name);
    if args.example_handler {
        let (addr, serve) = bank::bind("127.0.0.1:0", std::future::pending()).await?;
        tokio::spawn(serve);
        tracing::info!(address = %addr, "bundled example write handler (bank accounts) started");
        config.write_side.host = addr.ip().to_string();
        config.write_side.port = addr.port();
    }
    let node = Node::start(config).await?;
    node.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn example_handler(args: ExampleHandlerArgs) -> anyhow::Result<()> {
    let _telemetry = telemetry::init(&Default::default(), "regent-example-handler");
    let (addr, serve) = bank::bind(&format!("{}:{}", args.address, args.port), async {
        shutdown_signal().await;
    })
    .await?;
    tracing::info!(address = %addr, "example write handler (bank accounts) serving");
    serve.await?;
    Ok(())
}

async fn client(node: &str) -> anyhow::Result<ChiefOfStateServiceClient<tonic::transport::Channel>> {
    ChiefOfStateServiceClient::connect(node.to_string())
        .await
        .with_context(|| format!("cannot reach the node at {node}"))
}

async fn bank_command(command: BankCommand) -> anyhow::Result<()> {
    let (account, command, node): (String, Any, String) = match command {
        BankCommand::Open { account, owner, balance, node } => {
            (account, pack(&OpenAccount { owner, initial_balance: balance }), node.node)
        }
        BankCommand::Deposit { account, amount, node } => (account, pack(&Deposit { amount }), node.node),
        BankCommand::Withdraw { account, amount, node } => (account, pack(&Withdraw { amount }), node.node),
        BankCommand::Get { account, node } => {
            let reply = client(&node.node)
                .await?
                .get_state(GetStateRequest { entity_id: account })
                .await
                .map_err(status_error)?
                .into_inner();
            return print_account(reply.state, reply.meta);
        }
    };
    let reply = client(&node)
        .await?
        .process_command(ProcessCommandRequest { entity_id: account, command: Some(command) })
        .await
        .map_err(status_error)?
        .into_inner();
    print_account(reply.state, reply.meta)
}

fn print_account(state: Option<Any>, meta: Option<MetaData>) -> anyhow::Result<()> {
    let meta = meta.unwrap_or_default();
    let account = state
        .as_ref()
        .and_then(unpack::<BankAccount>)
        .transpose()?
        .with_context(|| format!("entity {} does not hold a bank account", meta.entity_id))?;
    println!(
        "account {}  owner {}  balance {}  (revision {}, {})",
        account.account_id,
        account.owner,
        account.balance,
        meta.revision_number,
        meta.revision_date.map(|d| d.to_string()).unwrap_or_default()
    );
    Ok(())
}

async fn get_state(args: GetStateArgs) -> anyhow::Result<()> {
    let reply = client(&args.node.node)
        .await?
        .get_state(GetStateRequest { entity_id: args.entity_id })
        .await
        .map_err(status_error)?
        .into_inner();
    let meta = reply.meta.unwrap_or_default();
    let state = reply.state.unwrap_or_default();
    println!("entity    {}", meta.entity_id);
    println!("revision  {}", meta.revision_number);
    println!("date      {}", meta.revision_date.map(|d| d.to_string()).unwrap_or_default());
    println!("state     {} ({} bytes)", state.type_url, state.value.len());
    Ok(())
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    match status.message() {
        "" => anyhow::anyhow!("{:?}", status.code()),
        message => anyhow::anyhow!("{:?}: {message}", status.code()),
    }
}
