//! The application's write handler as the entities see it: `HandleCommand` and `HandleEvent`. In production it
//! is the gRPC client [`WriteHandler`](crate::grpc::WriteHandler); benchmarks and embedders may run a handler
//! in process.

use async_trait::async_trait;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::proto::chief_of_state::v1::{
    HandleCommandRequest, HandleCommandResponse, HandleEventRequest, HandleEventResponse,
};

/// A write handler. Errors are gRPC statuses, relayed to the caller as they are.
#[async_trait]
pub trait WriteSide: Send + Sync + 'static {
    /// Turns a command into zero or more events; `headers` are the propagated request headers.
    async fn handle_command(
        &self,
        request: HandleCommandRequest,
        headers: MetadataMap,
    ) -> Result<HandleCommandResponse, Status>;

    /// Applies one event to a state.
    async fn handle_event(&self, request: HandleEventRequest) -> Result<HandleEventResponse, Status>;
}
