//! `ChiefOfStateService`: `ProcessCommand` and `GetState` routed to the entity through the node's shard region,
//! with the ask timeout of `COS_COMMAND_HANDLER_TIMEOUT`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

use super::headers;
use crate::actors::CommandEnvelope;
use crate::config::WriteSideConfig;
use crate::engine::EngineHandle;
use crate::proto::chief_of_state::v1::chief_of_state_service_server::ChiefOfStateService;
use crate::proto::chief_of_state::v1::*;
use crate::subscriptions::SubscriptionHub;
use crate::telemetry;

const SUBSCRIPTIONS_DISABLED: &str = "Subscription is not enabled; configure subscription to use streaming";

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ChiefOfState {
    engine: EngineHandle,
    write_side: Arc<WriteSideConfig>,
    subscriptions: Option<SubscriptionHub>,
}

impl ChiefOfState {
    pub fn new(engine: EngineHandle, write_side: Arc<WriteSideConfig>, subscriptions: Option<SubscriptionHub>) -> Self {
        Self { engine, write_side, subscriptions }
    }

    fn hub(&self) -> Result<&SubscriptionHub, Status> {
        self.subscriptions.as_ref().ok_or_else(|| Status::unimplemented(SUBSCRIPTIONS_DISABLED))
    }

    /// Ends a subscription (Unsubscribe and UnsubscribeAll alike); answers with its id, active or not.
    fn end_subscription(&self, subscription_id: String) -> Result<String, Status> {
        let hub = self.hub()?;
        if subscription_id.is_empty() {
            return Err(Status::invalid_argument("subscription_id is required"));
        }
        hub.unsubscribe(&subscription_id);
        Ok(subscription_id)
    }
}

fn entity_id_of(entity_id: String) -> Result<String, Status> {
    if entity_id.is_empty() {
        Err(Status::invalid_argument("empty entity ID"))
    } else if entity_id.contains('\0') {
        // PostgreSQL text cannot hold NUL: refuse before the handler runs rather than fail after it.
        Err(Status::invalid_argument("entity ID must not contain NUL characters"))
    } else {
        Ok(entity_id)
    }
}

/// A decoded `ProcessCommand` request and its metadata, as the entity receives it: the checked entity id and the
/// command envelope with the configured propagated and persisted headers (its trace context is left empty: the
/// caller fills it from its span). An invalid entity id is `INVALID_ARGUMENT`; the command itself is opaque and
/// goes to the write handler as sent (a missing one as an empty `Any`). Public for the fuzz targets (`fuzz/`).
pub fn command_of(
    body: ProcessCommandRequest,
    metadata: &MetadataMap,
    write_side: &WriteSideConfig,
) -> Result<(String, CommandEnvelope), Status> {
    let entity_id = entity_id_of(body.entity_id)?;
    let command = CommandEnvelope {
        command: body.command.unwrap_or_default(),
        propagated_headers: headers::propagated(metadata, &write_side.propagated_headers),
        persisted_headers: headers::persisted(metadata, &write_side.persisted_headers),
        trace_context: Default::default(),
    };
    Ok((entity_id, command))
}

/// The checked entity id of a decoded `GetState` request (`INVALID_ARGUMENT` when empty or holding NUL).
/// Public for the fuzz targets (`fuzz/`).
pub fn get_state_of(body: GetStateRequest) -> Result<String, Status> {
    entity_id_of(body.entity_id)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ChiefOfStateService for ChiefOfState {
    async fn process_command(
        &self,
        request: Request<ProcessCommandRequest>,
    ) -> Result<Response<ProcessCommandResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        let (entity_id, mut command) = command_of(body, &metadata, &self.write_side)?;
        let span = info_span!("process_command", entity_id = %entity_id, node = %self.engine.node());
        telemetry::extract(&span, &metadata);
        command.trace_context = telemetry::inject(&span);
        let state = self.engine.process_command(entity_id, command).instrument(span).await?;
        Ok(Response::new(ProcessCommandResponse { state: state.state, meta: state.meta }))
    }

    async fn get_state(&self, request: Request<GetStateRequest>) -> Result<Response<GetStateResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        let entity_id = get_state_of(body)?;
        let span = info_span!("get_state", entity_id = %entity_id, node = %self.engine.node());
        telemetry::extract(&span, &metadata);
        let state = self.engine.get_state(entity_id).instrument(span).await?;
        Ok(Response::new(GetStateResponse { state: state.state, meta: state.meta }))
    }

    type SubscribeStream = BoxStream<SubscribeResponse>;
    type SubscribeAllStream = BoxStream<SubscribeAllResponse>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let hub = self.hub()?;
        let request = request.into_inner();
        if request.entity_id.is_empty() {
            return Err(Status::invalid_argument("entity_id is required"));
        }
        let entity_id = request.entity_id;
        let (_, stream) = hub.subscribe(
            request.subscription_id,
            move |p| p.entity_id == entity_id,
            |id, p| SubscribeResponse {
                subscription_id: id.to_string(),
                event: p.event.clone(),
                resulting_state: p.resulting_state.clone(),
                meta: p.meta.clone(),
            },
        )?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn subscribe_all(
        &self,
        request: Request<SubscribeAllRequest>,
    ) -> Result<Response<Self::SubscribeAllStream>, Status> {
        let hub = self.hub()?;
        let (_, stream) = hub.subscribe(
            request.into_inner().subscription_id,
            |_| true,
            |id, p| SubscribeAllResponse {
                subscription_id: id.to_string(),
                event: p.event.clone(),
                resulting_state: p.resulting_state.clone(),
                meta: p.meta.clone(),
            },
        )?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn unsubscribe(&self, request: Request<UnsubscribeRequest>) -> Result<Response<UnsubscribeResponse>, Status> {
        let subscription_id = self.end_subscription(request.into_inner().subscription_id)?;
        Ok(Response::new(UnsubscribeResponse { subscription_id }))
    }

    async fn unsubscribe_all(
        &self,
        request: Request<UnsubscribeAllRequest>,
    ) -> Result<Response<UnsubscribeAllResponse>, Status> {
        let subscription_id = self.end_subscription(request.into_inner().subscription_id)?;
        Ok(Response::new(UnsubscribeAllResponse { subscription_id }))
    }
}
