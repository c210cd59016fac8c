#!/usr/bin/env bash
# Builds Regent's container image from deploy/Dockerfile.
#
#   deploy/scripts/build-image.sh [--tag TAG]                    # release build in the Rust builder stage
#   deploy/scripts/build-image.sh --prebuilt PATH [--tag TAG]    # a binary built on this host (runtime-prebuilt)
#
# The default tag is regent:latest. The first form builds from source in the Dockerfile's `builder` stage (needs
# the Rust image, and BuildKit: the legacy builder would also build the prebuilt stage). The second puts a binary
# built here (e.g. `cargo build --release --bin regent` → target/release/regent) into the same runtime stage; it
# needs no Rust image, and its context is a folder holding that binary alone. The binary must link against a glibc
# no newer than the runtime base's (Debian 12 bookworm by default). Where the Debian base cannot be pulled, it is
# made first from Debian's packages (deploy/scripts/base-image.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=regent:latest
prebuilt=
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --prebuilt) prebuilt=$2; shift 2 ;;
    *) echo "usage: $0 [--prebuilt PATH] [--tag TAG]" >&2; exit 2 ;;
  esac
done

runtime_image=${RUNTIME_IMAGE:-debian:bookworm-slim}
bash deploy/scripts/base-image.sh "$runtime_image"

if [ -n "$prebuilt" ]; then
  [ -x "$prebuilt" ] || { echo "build-image.sh: $prebuilt is not an executable" >&2; exit 1; }
  context=$(mktemp -d)
  trap 'rm -rf "$context"' EXIT
  cp "$prebuilt" "$context/regent"
  docker build -f deploy/Dockerfile --target runtime-prebuilt --build-arg "RUNTIME_IMAGE=$runtime_image" \
    -t "$tag" "$context"
else
  docker build -f deploy/Dockerfile --build-arg "RUNTIME_IMAGE=$runtime_image" -t "$tag" .
fi
echo "build-image.sh: $tag is $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')" >&2
