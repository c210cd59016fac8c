//! Support for the deployment tests: Docker and Compose driven through their command lines ([`docker`]), a client
//! load with the README's retry policy ([`load`]), and a renderer for the Helm chart's templates ([`helm`]).
#![allow(dead_code)]

pub mod docker;
pub mod helm;
pub mod load;

use std::path::{Path, PathBuf};

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A path under `deploy/`.
pub fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}
