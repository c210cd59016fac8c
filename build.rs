//! Compiles the protos in `proto/` with protox (pure Rust: no system `protoc` needed) and generates the
//! prost messages and tonic services; also writes the descriptor set that gRPC server reflection serves.

use prost::Message;
use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "chief_of_state/v1/common.proto",
    "chief_of_state/v1/service.proto",
    "chief_of_state/v1/writeside.proto",
    "chief_of_state/v1/readside.proto",
    "chief_of_state/v1/manager.proto",
    "chief_of_state/v1/persistence.proto",
    "chief_of_state/plugins/persisted_headers/v1/headers.proto",
    "regent/examples/bank/v1/bank.proto",
    "regent/v1/admin.proto",
    "regent/v1/cluster.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("regent_descriptor.bin"), fds.encode_to_vec())?;
    let mut prost_config = tonic_prost_build::Config::new();
    // `prost::Name` impls, so that messages pack into `Any` with their type URL.
    prost_config.enable_type_names();
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds_with_config(fds, prost_config)?;
    Ok(())
}
