//! Generated protobuf messages and gRPC services.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod chief_of_state {
    pub mod v1 {
        tonic::include_proto!("chief_of_state.v1");
    }
    pub mod plugins {
        pub mod persisted_headers {
            pub mod v1 {
                tonic::include_proto!("chief_of_state.plugins.persisted_headers.v1");
            }
        }
    }
}

pub mod bank {
    tonic::include_proto!("regent.examples.bank.v1");
}

/// The encoded `FileDescriptorSet` of every proto, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/regent_descriptor.bin"));

/// Regent's own APIs (`regent.v1`).
pub mod regent {
    pub mod v1 {
        tonic::include_proto!("regent.v1");
    }
}
