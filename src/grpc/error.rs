//! The one place where internal errors become `tonic::Status`, with a message a user can act on.

use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::{Code, Status};

use crate::actors::CommandError;
use crate::persistence;

impl From<CommandError> for Status {
    fn from(error: CommandError) -> Self {
        match error {
            // Same code, message, rich details (`grpc-status-details-bin`) and custom trailers as the handler sent.
            CommandError::Handler(status) => relay(&status),
            CommandError::InvalidArgument(message) => Status::invalid_argument(message),
            // CoS answers NOT_FOUND with no description.
            CommandError::NotFound => Status::not_found(""),
            CommandError::FailedPrecondition(message) => Status::failed_precondition(message),
            error @ CommandError::Overloaded { .. } => Status::resource_exhausted(error.to_string()),
            CommandError::WrongHome { shard } => {
                Status::unavailable(format!("shard {shard} is moving between nodes; try again"))
            }
            CommandError::Store(e) => e.into(),
        }
    }
}

impl From<persistence::Error> for Status {
    fn from(error: persistence::Error) -> Self {
        let code = match &error {
            persistence::Error::Conflict { .. } => Code::Aborted,
            persistence::Error::Unavailable(_) | persistence::Error::Fenced(_) => Code::Unavailable,
            persistence::Error::Misconfigured(_) | persistence::Error::Backend(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

/// A copy of a handler's status fit to send to our own caller: transport-level entries are left out.
fn relay(status: &Status) -> Status {
    let mut metadata = MetadataMap::new();
    for entry in status.metadata().iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) if !is_transport_header(key.as_str()) => {
                metadata.append(key.clone(), value.clone());
            }
            KeyAndValueRef::Binary(key, value) if !is_transport_header(key.as_str()) => {
                metadata.append_bin(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    Status::with_details_and_metadata(
        status.code(),
        status.message().to_string(),
        status.details().to_vec().into(),
        metadata,
    )
}

fn is_transport_header(key: &str) -> bool {
    key.starts_with("grpc-")
        || matches!(key, "content-type" | "content-length" | "date" | "server" | "te" | "trailer" | "transfer-encoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_status_is_relayed_with_details_and_custom_trailers() {
        let mut md = MetadataMap::new();
        md.insert("x-custom", "v".parse().unwrap());
        md.insert("content-type", "application/grpc".parse().unwrap());
        md.insert("grpc-status", "5".parse().unwrap());
        let status =
            Status::with_details_and_metadata(Code::NotFound, "no account", bytes::Bytes::from_static(b"\x08\x05"), md);
        let out: Status = CommandError::Handler(status).into();
        assert_eq!(out.code(), Code::NotFound);
        assert_eq!(out.message(), "no account");
        assert_eq!(out.details(), b"\x08\x05");
        assert_eq!(out.metadata().get("x-custom").unwrap(), "v");
        assert!(out.metadata().get("content-type").is_none());
        assert!(out.metadata().get("grpc-status").is_none());
    }

    #[test]
    fn store_errors_map_to_codes() {
        let conflict = persistence::Error::Conflict { entity_id: "e".into(), revision: 3 };
        assert_eq!(Status::from(conflict).code(), Code::Aborted);
        assert_eq!(Status::from(persistence::Error::Unavailable("down".into())).code(), Code::Unavailable);
        assert_eq!(Status::from(CommandError::NotFound).message(), "");
        let overloaded = Status::from(CommandError::Overloaded { entity_id: "e".into(), limit: 3 });
        assert_eq!(overloaded.code(), Code::ResourceExhausted);
        assert!(overloaded.message().contains("REGENT_ENTITY_QUEUE_LIMIT"), "{}", overloaded.message());
    }
}
