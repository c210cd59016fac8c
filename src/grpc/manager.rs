//! `ReadSideManagerService` (CoS's read-side manager API, served when `COS_READ_SIDE_ENABLED=true`) and Regent's
//! `ReadSideAdminService` (what each processor is doing), both backed by the node's
//! [`ReadSideSupervisor`](crate::actors::ReadSideSupervisor).

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor::rpc::CallResult;
use tonic::{Request, Response, Status};

use crate::actors::read_side_processor::ProcessorStatus;
use crate::actors::read_side_supervisor::{ReadSideError, ReadSideOp, SupervisorMessage};
use crate::metrics::ReadSideView;
use crate::persistence::Store;
use crate::proto::chief_of_state::v1::read_side_manager_service_server::ReadSideManagerService;
use crate::proto::chief_of_state::v1::*;
use crate::proto::regent::v1::read_side_admin_service_server::ReadSideAdminService;
use crate::proto::regent::v1::{ListReadSidesRequest, ListReadSidesResponse, ReadSideShardStatus};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl From<ReadSideError> for Status {
    fn from(error: ReadSideError) -> Self {
        match error {
            ReadSideError::UnknownReadSide(_) => Status::not_found(error.to_string()),
            ReadSideError::ShardOutOfRange { .. } => Status::invalid_argument(error.to_string()),
            ReadSideError::Restarting(..) => Status::unavailable(error.to_string()),
            ReadSideError::NotHostedHere(_) => Status::failed_precondition(error.to_string()),
            ReadSideError::Store(e) => e.into(),
        }
    }
}

/// Both read-side services; cheap to clone.
#[derive(Clone)]
pub struct ReadSideManager {
    supervisor: ActorRef<SupervisorMessage>,
    store: Arc<dyn Store>,
    num_shards: u32,
    read_side_ids: Arc<Vec<String>>,
}

impl ReadSideManager {
    pub fn new(
        supervisor: ActorRef<SupervisorMessage>,
        store: Arc<dyn Store>,
        num_shards: u32,
        read_side_ids: Vec<String>,
    ) -> Self {
        Self { supervisor, store, num_shards, read_side_ids: Arc::new(read_side_ids) }
    }

    fn known(&self, read_side_id: &str) -> Result<(), Status> {
        if self.read_side_ids.iter().any(|id| id == read_side_id) {
            Ok(())
        } else {
            Err(ReadSideError::UnknownReadSide(read_side_id.to_string()).into())
        }
    }

    fn check_shard(&self, shard: u64) -> Result<u32, Status> {
        if shard < u64::from(self.num_shards) {
            Ok(shard as u32)
        } else {
            Err(ReadSideError::ShardOutOfRange { shard, num_shards: self.num_shards }.into())
        }
    }

    async fn command(&self, read_side_id: String, shard: Option<u64>, op: ReadSideOp) -> Result<bool, Status> {
        self.known(&read_side_id)?;
        if let Some(shard) = shard {
            self.check_shard(shard)?;
        }
        let call = self
            .supervisor
            .call(|reply| SupervisorMessage::Command { read_side_id, shard, op, reply }, Some(CALL_TIMEOUT))
            .await;
        match call {
            Ok(CallResult::Success(outcome)) => outcome.map(|()| true).map_err(Status::from),
            Ok(CallResult::Timeout) => Err(Status::deadline_exceeded("the read side did not answer in time")),
            _ => Err(Status::unavailable("read sides are shutting down")),
        }
    }

    /// What each processor of `read_side_id` (every read side when `None`) running on this node is doing.
    pub async fn views(&self, read_side_id: Option<String>) -> Result<Vec<ReadSideView>, Status> {
        let call =
            self.supervisor.call(|reply| SupervisorMessage::Report { read_side_id, reply }, Some(CALL_TIMEOUT)).await;
        let reports = match call {
            Ok(CallResult::Success(outcome)) => outcome.map_err(Status::from)?,
            Ok(CallResult::Timeout) => return Err(Status::deadline_exceeded("the read sides did not answer in time")),
            _ => return Err(Status::unavailable("read sides are shutting down")),
        };
        let mut views: Vec<ReadSideView> = reports
            .into_iter()
            .map(|(read_side, report)| {
                let error = match &report.status {
                    ProcessorStatus::Replaying { error, .. } | ProcessorStatus::Stopped { error } => error.clone(),
                    _ => String::new(),
                };
                ReadSideView {
                    read_side,
                    shard: report.shard,
                    offset: report.cursor.ordering,
                    status: report.status.to_string(),
                    error,
                    lag_seconds: report.lag_seconds(),
                    delivered: report.delivered,
                    failures: report.failures,
                }
            })
            .collect();
        views.sort_by(|a, b| (&a.read_side, a.shard).cmp(&(&b.read_side, b.shard)));
        Ok(views)
    }

    async fn offset(&self, read_side_id: &str, shard: u32) -> Result<ReadSideOffset, Status> {
        let offset = self.store.load_offset(read_side_id, shard).await.map_err(Status::from)?;
        Ok(ReadSideOffset { cluster_shard_number: u64::from(shard), offset: offset.cursor.ordering })
    }
}

#[tonic::async_trait]
impl ReadSideManagerService for ReadSideManager {
    async fn get_latest_offset(
        &self,
        request: Request<GetLatestOffsetRequest>,
    ) -> Result<Response<GetLatestOffsetResponse>, Status> {
        let read_side_id = request.into_inner().read_side_id;
        self.known(&read_side_id)?;
        let stored = self.store.load_offsets(&read_side_id).await.map_err(Status::from)?;
        let offsets = (0..self.num_shards)
            .map(|shard| ReadSideOffset {
                cluster_shard_number: u64::from(shard),
                offset: stored.iter().find(|(s, _)| *s == shard).map_or(0, |(_, o)| o.cursor.ordering),
            })
            .collect();
        Ok(Response::new(GetLatestOffsetResponse { offsets }))
    }

    async fn get_latest_offset_by_shard(
        &self,
        request: Request<GetLatestOffsetByShardRequest>,
    ) -> Result<Response<GetLatestOffsetByShardResponse>, Status> {
        let request = request.into_inner();
        self.known(&request.read_side_id)?;
        let shard = self.check_shard(request.cluster_shard_number)?;
        let offsets = self.offset(&request.read_side_id, shard).await?;
        Ok(Response::new(GetLatestOffsetByShardResponse { offsets: Some(offsets) }))
    }

    async fn restart_read_side(
        &self,
        request: Request<RestartReadSideRequest>,
    ) -> Result<Response<RestartReadSideResponse>, Status> {
        let request = request.into_inner();
        let successful = self.command(request.read_side_id, None, ReadSideOp::Restart).await?;
        Ok(Response::new(RestartReadSideResponse { successful }))
    }

    async fn restart_read_side_by_shard(
        &self,
        request: Request<RestartReadSideByShardRequest>,
    ) -> Result<Response<RestartReadSideByShardResponse>, Status> {
        let request = request.into_inner();
        let successful =
            self.command(request.read_side_id, Some(request.cluster_shard_number), ReadSideOp::Restart).await?;
        Ok(Response::new(RestartReadSideByShardResponse { successful }))
    }

    async fn pause_read_side(
        &self,
        request: Request<PauseReadSideRequest>,
    ) -> Result<Response<PauseReadSideResponse>, Status> {
        let request = request.into_inner();
        let successful = self.command(request.read_side_id, None, ReadSideOp::Pause).await?;
        Ok(Response::new(PauseReadSideResponse { successful }))
    }

    async fn pause_read_side_by_shard(
        &self,
        request: Request<PauseReadSideByShardRequest>,
    ) -> Result<Response<PauseReadSideByShardResponse>, Status> {
        let request = request.into_inner();
        let successful =
            self.command(request.read_side_id, Some(request.cluster_shard_number), ReadSideOp::Pause).await?;
        Ok(Response::new(PauseReadSideByShardResponse { successful }))
    }

    async fn resume_read_side(
        &self,
        request: Request<ResumeReadSideRequest>,
    ) -> Result<Response<ResumeReadSideResponse>, Status> {
        let request = request.into_inner();
        let successful = self.command(request.read_side_id, None, ReadSideOp::Resume).await?;
        Ok(Response::new(ResumeReadSideResponse { successful }))
    }

    async fn resume_read_side_by_shard(
        &self,
        request: Request<ResumeReadSideByShardRequest>,
    ) -> Result<Response<ResumeReadSideByShardResponse>, Status> {
        let request = request.into_inner();
        let successful =
            self.command(request.read_side_id, Some(request.cluster_shard_number), ReadSideOp::Resume).await?;
        Ok(Response::new(ResumeReadSideByShardResponse { successful }))
    }

    async fn skip_offset(&self, request: Request<SkipOffsetRequest>) -> Result<Response<SkipOffsetResponse>, Status> {
        let request = request.into_inner();
        let successful = self.command(request.read_side_id, None, ReadSideOp::Skip).await?;
        Ok(Response::new(SkipOffsetResponse { successful }))
    }

    async fn skip_offset_by_shard(
        &self,
        request: Request<SkipOffsetByShardRequest>,
    ) -> Result<Response<SkipOffsetByShardResponse>, Status> {
        let request = request.into_inner();
        let successful =
            self.command(request.read_side_id, Some(request.cluster_shard_number), ReadSideOp::Skip).await?;
        Ok(Response::new(SkipOffsetByShardResponse { successful }))
    }
}

#[tonic::async_trait]
impl ReadSideAdminService for ReadSideManager {
    async fn list_read_sides(
        &self,
        request: Request<ListReadSidesRequest>,
    ) -> Result<Response<ListReadSidesResponse>, Status> {
        let read_side_id = Some(request.into_inner().read_side_id).filter(|id| !id.is_empty());
        let shards = self
            .views(read_side_id)
            .await?
            .into_iter()
            .map(|view| ReadSideShardStatus {
                read_side_id: view.read_side,
                shard: view.shard,
                offset: view.offset,
                status: view.status,
                error: view.error,
                delivered: view.delivered,
                failures: view.failures,
            })
            .collect();
        Ok(Response::new(ListReadSidesResponse { shards }))
    }
}
