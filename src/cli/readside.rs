//! `regent readside ...`: the read-side manager API (CoS's `ReadSideManagerService`) and Regent's processor
//! report, printed as tables.

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tonic::transport::Channel;

use super::{ReadsideCommand, ReadsideTarget};
use crate::actors::ReadSideOp;
use crate::proto::chief_of_state::v1::read_side_manager_service_client::ReadSideManagerServiceClient;
use crate::proto::chief_of_state::v1::*;
use crate::proto::regent::v1::ListReadSidesRequest;
use crate::proto::regent::v1::read_side_admin_service_client::ReadSideAdminServiceClient;

async fn channel(node: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(node.to_string())?.connect().await.with_context(|| format!("cannot reach the node at {node}"))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// Runs one `regent readside` command.
pub async fn run(command: ReadsideCommand) -> anyhow::Result<()> {
    match command {
        ReadsideCommand::List { read_side_id, node } => {
            let mut client = ReadSideAdminServiceClient::new(channel(&node.node).await?);
            let request = ListReadSidesRequest { read_side_id: read_side_id.unwrap_or_default() };
            let shards = client.list_read_sides(request).await.map_err(status_error)?.into_inner().shards;
            let mut table = Table::new();
            table.load_style(UTF8_FULL_CONDENSED).set_header([
                "read side",
                "shard",
                "offset",
                "status",
                "delivered",
                "failures",
                "last error",
            ]);
            for s in shards {
                table.add_row([
                    s.read_side_id,
                    s.shard.to_string(),
                    s.offset.to_string(),
                    s.status,
                    s.delivered.to_string(),
                    s.failures.to_string(),
                    s.error,
                ]);
            }
            println!("{table}");
        }
        ReadsideCommand::Offsets(target) => {
            let mut client = ReadSideManagerServiceClient::new(channel(&target.node.node).await?);
            let offsets = match target.shard {
                Some(shard) => client
                    .get_latest_offset_by_shard(GetLatestOffsetByShardRequest {
                        read_side_id: target.read_side_id.clone(),
                        cluster_shard_number: shard,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .offsets
                    .into_iter()
                    .collect(),
                None => {
                    let request = GetLatestOffsetRequest { read_side_id: target.read_side_id.clone() };
                    client.get_latest_offset(request).await.map_err(status_error)?.into_inner().offsets
                }
            };
            let mut table = Table::new();
            table.load_style(UTF8_FULL_CONDENSED).set_header(["read side", "shard", "offset"]);
            for o in offsets {
                table.add_row([target.read_side_id.clone(), o.cluster_shard_number.to_string(), o.offset.to_string()]);
            }
            println!("{table}");
        }
        ReadsideCommand::Pause(t) => act(t, "paused", ReadSideOp::Pause).await?,
        ReadsideCommand::Resume(t) => act(t, "resumed", ReadSideOp::Resume).await?,
        ReadsideCommand::Restart(t) => act(t, "restarted", ReadSideOp::Restart).await?,
        ReadsideCommand::Skip(t) => act(t, "skipped an event", ReadSideOp::Skip).await?,
    }
    Ok(())
}

async fn act(target: ReadsideTarget, done: &str, op: ReadSideOp) -> anyhow::Result<()> {
    let mut client = ReadSideManagerServiceClient::new(channel(&target.node.node).await?);
    let id = target.read_side_id.clone();
    let successful = match (op, target.shard) {
        (ReadSideOp::Pause, None) => {
            client.pause_read_side(PauseReadSideRequest { read_side_id: id }).await.map(|r| r.into_inner().successful)
        }
        (ReadSideOp::Pause, Some(shard)) => client
            .pause_read_side_by_shard(PauseReadSideByShardRequest { read_side_id: id, cluster_shard_number: shard })
            .await
            .map(|r| r.into_inner().successful),
        (ReadSideOp::Resume, None) => {
            client.resume_read_side(ResumeReadSideRequest { read_side_id: id }).await.map(|r| r.into_inner().successful)
        }
        (ReadSideOp::Resume, Some(shard)) => client
            .resume_read_side_by_shard(ResumeReadSideByShardRequest { read_side_id: id, cluster_shard_number: shard })
            .await
            .map(|r| r.into_inner().successful),
        (ReadSideOp::Restart, None) => client
            .restart_read_side(RestartReadSideRequest { read_side_id: id })
            .await
            .map(|r| r.into_inner().successful),
        (ReadSideOp::Restart, Some(shard)) => client
            .restart_read_side_by_shard(RestartReadSideByShardRequest { read_side_id: id, cluster_shard_number: shard })
            .await
            .map(|r| r.into_inner().successful),
        (ReadSideOp::Skip, None) => {
            client.skip_offset(SkipOffsetRequest { read_side_id: id }).await.map(|r| r.into_inner().successful)
        }
        (ReadSideOp::Skip, Some(shard)) => client
            .skip_offset_by_shard(SkipOffsetByShardRequest { read_side_id: id, cluster_shard_number: shard })
            .await
            .map(|r| r.into_inner().successful),
    }
    .map_err(status_error)?;
    if !successful {
        bail!("the node answered successful=false");
    }
    match target.shard {
        Some(shard) => println!("read side {} {done} in shard {shard}", target.read_side_id),
        None => println!("read side {} {done} in every shard", target.read_side_id),
    }
    Ok(())
}
