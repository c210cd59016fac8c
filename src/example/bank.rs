//! A small, real write handler: bank accounts. Commands `OpenAccount`, `Deposit`, `Withdraw`; events
//! `AccountOpened`, `Deposited`, `Withdrawn`; state `BankAccount`. Business rules answer with the gRPC codes a
//! CoS handler would use (`ALREADY_EXISTS`, `NOT_FOUND`, `INVALID_ARGUMENT`, `FAILED_PRECONDITION`).

use std::future::Future;
use std::net::SocketAddr;

use prost::{Message, Name};
use prost_types::Any;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::proto::bank::{AccountOpened, BankAccount, Deposit, Deposited, OpenAccount, Withdraw, Withdrawn};
use crate::proto::chief_of_state::v1::write_side_handler_service_server::{
    WriteSideHandlerService, WriteSideHandlerServiceServer,
};
use crate::proto::chief_of_state::v1::{
    HandleCommandRequest, HandleCommandResponse, HandleEventRequest, HandleEventResponse,
};

/// Packs a message into an `Any` with the usual `type.googleapis.com/` prefix.
pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

/// Unpacks an `Any` holding an `M`, or `None` when it holds another type.
pub fn unpack<M: Message + Name + Default>(any: &Any) -> Option<Result<M, prost::DecodeError>> {
    (any.type_url.rsplit('/').next() == Some(M::full_name().as_str())).then(|| M::decode(any.value.as_slice()))
}

/// The bank-account handler.
#[derive(Debug, Default, Clone, Copy)]
pub struct BankHandler;

fn decode_error(what: &str, e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("{what} does not decode: {e}"))
}

fn account_of(state: Option<&Any>) -> Result<Option<BankAccount>, Status> {
    match state.and_then(unpack::<BankAccount>) {
        Some(account) => account.map(Some).map_err(|e| decode_error("state", e)),
        None => Ok(None),
    }
}

#[tonic::async_trait]
impl WriteSideHandlerService for BankHandler {
    async fn handle_command(
        &self,
        request: Request<HandleCommandRequest>,
    ) -> Result<Response<HandleCommandResponse>, Status> {
        let request = request.into_inner();
        let command = request.command.unwrap_or_default();
        let account = account_of(request.prior_state.as_ref())?;
        let account_id = request.prior_event_meta.map(|m| m.entity_id).unwrap_or_default();
        let event = if let Some(open) = unpack::<OpenAccount>(&command) {
            let open = open.map_err(|e| decode_error("OpenAccount", e))?;
            if account.is_some() {
                return Err(Status::already_exists(format!("account {account_id} is already open")));
            }
            if open.owner.trim().is_empty() {
                return Err(Status::invalid_argument("an account needs an owner"));
            }
            if open.initial_balance < 0 {
                return Err(Status::invalid_argument("the initial balance cannot be negative"));
            }
            pack(&AccountOpened { account_id, owner: open.owner, balance: open.initial_balance })
        } else if let Some(deposit) = unpack::<Deposit>(&command) {
            let deposit = deposit.map_err(|e| decode_error("Deposit", e))?;
            account.ok_or_else(|| Status::not_found(format!("account {account_id} does not exist")))?;
            if deposit.amount <= 0 {
                return Err(Status::invalid_argument("a deposit must be positive"));
            }
            pack(&Deposited { amount: deposit.amount })
        } else if let Some(withdraw) = unpack::<Withdraw>(&command) {
            let withdraw = withdraw.map_err(|e| decode_error("Withdraw", e))?;
            let account = account.ok_or_else(|| Status::not_found(format!("account {account_id} does not exist")))?;
            if withdraw.amount <= 0 {
                return Err(Status::invalid_argument("a withdrawal must be positive"));
            }
            if withdraw.amount > account.balance {
                return Err(Status::failed_precondition(format!(
                    "insufficient funds: balance {}, withdrawal {}",
                    account.balance, withdraw.amount
                )));
            }
            pack(&Withdrawn { amount: withdraw.amount })
        } else {
            return Err(Status::invalid_argument(format!("unknown command type {:?}", command.type_url)));
        };
        #[allow(deprecated)]
        Ok(Response::new(HandleCommandResponse { event: None, events: vec![event] }))
    }

    async fn handle_event(
        &self,
        request: Request<HandleEventRequest>,
    ) -> Result<Response<HandleEventResponse>, Status> {
        let request = request.into_inner();
        let event = request.event.unwrap_or_default();
        let account = account_of(request.prior_state.as_ref())?;
        let next = if let Some(opened) = unpack::<AccountOpened>(&event) {
            let opened = opened.map_err(|e| decode_error("AccountOpened", e))?;
            BankAccount { account_id: opened.account_id, owner: opened.owner, balance: opened.balance }
        } else {
            let mut account =
                account.ok_or_else(|| Status::failed_precondition("event for an account never opened"))?;
            if let Some(deposited) = unpack::<Deposited>(&event) {
                account.balance += deposited.map_err(|e| decode_error("Deposited", e))?.amount;
            } else if let Some(withdrawn) = unpack::<Withdrawn>(&event) {
                account.balance -= withdrawn.map_err(|e| decode_error("Withdrawn", e))?.amount;
            } else {
                return Err(Status::invalid_argument(format!("unknown event type {:?}", event.type_url)));
            }
            account
        };
        Ok(Response::new(HandleEventResponse { resulting_state: Some(pack(&next)) }))
    }
}

/// Binds `addr` and serves the handler until `shutdown` completes; returns the bound address at once and the
/// serving future to spawn.
pub async fn bind<F: Future<Output = ()> + Send + 'static>(
    addr: &str,
    shutdown: F,
) -> std::io::Result<(SocketAddr, impl Future<Output = Result<(), tonic::transport::Error>> + Send + use<F>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let serve = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(WriteSideHandlerServiceServer::new(BankHandler))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        );
    Ok((local, serve))
}

/// The bank handler in process (no gRPC), for embedding and for the engine benchmark.
#[async_trait::async_trait]
impl crate::write_side::WriteSide for BankHandler {
    async fn handle_command(
        &self,
        request: HandleCommandRequest,
        _: tonic::metadata::MetadataMap,
    ) -> Result<HandleCommandResponse, Status> {
        WriteSideHandlerService::handle_command(self, Request::new(request)).await.map(Response::into_inner)
    }

    async fn handle_event(&self, request: HandleEventRequest) -> Result<HandleEventResponse, Status> {
        WriteSideHandlerService::handle_event(self, Request::new(request)).await.map(Response::into_inner)
    }
}
