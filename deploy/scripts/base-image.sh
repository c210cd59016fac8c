#!/usr/bin/env bash
# Makes sure the Debian base images the Dockerfiles start from are present, for machines without a registry.
#
#   deploy/scripts/base-image.sh [TAG...]        # default: debian:bookworm-slim
#
# For each tag: an image already present is reused; otherwise it is pulled; where that fails (no registry), it is
# made from Debian's packages: `debootstrap --variant=minbase` into a temporary folder, trimmed the way the
# official `-slim` images are (no docs, man pages or locales; apt lists and caches emptied), then
# `docker import`ed under the same tag. Later runs find it and reuse it. Only `debian:<suite>` and
# `debian:<suite>-slim` tags can be made this way.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR (default
# http://deb.debian.org/debian-security), REGENT_BASE_PULL=0 to skip the pull attempt. Needs root (or sudo) to
# debootstrap; installs debootstrap from Debian's packages when it is missing.
set -euo pipefail

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

log() { echo "base-image.sh: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

need_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return 0
  log "installing debootstrap from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# make_debian TAG SUITE SLIM(0|1): debootstrap SUITE and import it as TAG (in a subshell: the folder goes on exit).
make_debian() (
  local tag=$1 suite=$2 slim=$3 work rootfs
  need_debootstrap
  work=$(mktemp -d /tmp/regent-base-image.XXXXXX)
  rootfs=$work/rootfs
  trap 'as_root rm -rf "$work"' EXIT
  log "making $tag from Debian's packages (debootstrap $suite, $mirror)"
  if ! as_root debootstrap --variant=minbase --components=main "$suite" "$rootfs" "$mirror" >"$work/log" 2>&1; then
    tail -20 "$work/log" >&2
    return 1
  fi
  # The official images' apt sources (deb822) and apt settings.
  as_root rm -f "$rootfs/etc/apt/sources.list"
  as_root tee "$rootfs/etc/apt/sources.list.d/debian.sources" >/dev/null <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  as_root tee "$rootfs/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  as_root tee "$rootfs/etc/apt/apt.conf.d/docker-no-languages" >/dev/null <<<'Acquire::Languages "none";'
  if [ "$slim" = 1 ]; then
    # What later `apt-get install`s leave out, as in the official -slim images.
    as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
    as_root find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    as_root find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    as_root rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/*
    as_root find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  fi
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.cache
  as_root sh -c ": > '$rootfs/etc/hostname'; : > '$rootfs/etc/resolv.conf'"
  as_root tar --numeric-owner -C "$rootfs" -c . |
    docker import \
      --change 'CMD ["bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change "LABEL org.regent.base-image=\"debootstrap $suite (minbase$([ "$slim" = 1 ] && echo ', slim')) from $mirror\"" \
      - "$tag" >/dev/null
  log "made $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
)

ensure() {
  local tag=$1 suite
  if docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag is present"
    return 0
  fi
  if [ "${REGENT_BASE_PULL:-1}" != 0 ] && timeout 300 docker pull -q "$tag" >/dev/null 2>&1; then
    log "pulled $tag"
    return 0
  fi
  case $tag in
    debian:*-slim) suite=${tag#debian:} && make_debian "$tag" "${suite%-slim}" 1 && return 0 ;;
    debian:*) make_debian "$tag" "${tag#debian:}" 0 && return 0 ;;
  esac
  log "$tag is not present, cannot be pulled, and is not a Debian image this script can make"
  return 1
}

main() {
  [ $# -gt 0 ] || set -- debian:bookworm-slim
  # One maker at a time on this machine: concurrent test runs share the images.
  exec 9>"/tmp/regent-base-image.lock"
  flock 9
  local tag
  for tag in "$@"; do
    ensure "$tag"
  done
}

main "$@"
