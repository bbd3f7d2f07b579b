#!/usr/bin/env bash
# Local stand-ins for the official images, for machines that cannot reach Docker Hub:
#
#   xcloud-local/debian:bookworm   a Debian 12 root filesystem (debootstrap + docker import)
#   xcloud-local/postgres:15       for postgres:15        (infra/docker/postgres)
#   xcloud-local/kafka:3.9.1       for apache/kafka:3.9.1 (infra/docker/kafka)
#   xcloud-local/python:3.11       for python:3.11-slim   (infra/docker/python)
#
# Built from Debian's packages and Maven Central's jars only, under local names (never the
# official ones). An image already there is kept (--force rebuilds). Usage:
#   scripts/stand-in-images.sh [--force] [postgres] [kafka] [python]    (default: all three)
# Ends by printing the variables that select them (XCLOUD_*_IMAGE=...).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${XCLOUD_STANDIN_PREFIX:-xcloud-local}
BASE=$PREFIX/debian:bookworm
MIRROR=${XCLOUD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
LABEL=org.xcloud.stand-in=true

say() { printf 'stand-ins: %s\n' "$*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
force=""
wanted=()
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    postgres | kafka | python) wanted+=("$arg") ;;
    *) echo "usage: $0 [--force] [postgres] [kafka] [python]" >&2; exit 2 ;;
  esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=(postgres kafka python)

# The legacy builder: Debian's docker.io has no buildx. Builds use the host's network, so
# apt inside them reaches Debian's mirror whatever the bridge's NAT allows.
build() { # tag context
  DOCKER_BUILDKIT=0 docker build -q --network host --label "$LABEL" \
    --build-arg "BASE_IMAGE=$BASE" -t "$1" "$2" >/dev/null
}

base() {
  [ -z "$force" ] && have "$BASE" && return
  command -v debootstrap >/dev/null || {
    say "installing debootstrap (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  local dir; dir=$(mktemp -d /var/tmp/xcloud-rootfs.XXXXXX)
  say "debootstrap Debian 12 (minbase) into $dir"
  debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >/dev/null
  # As in Debian's own container images: no services started by package scripts, no
  # recommends, no package caches left behind.
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d" && chmod +x "$dir/usr/sbin/policy-rc.d"
  echo 'APT::Install-Recommends "false";' >"$dir/etc/apt/apt.conf.d/90xcloud-no-recommends"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL $LABEL" --change 'CMD ["bash"]' - "$BASE" >/dev/null
  rm -rf "$dir"
  say "imported $BASE"
}

postgres() {
  build "$PREFIX/postgres:15" "$ROOT/infra/docker/postgres"
  say "built $PREFIX/postgres:15"
}

kafka() {
  local libs ctx
  libs=$("$ROOT/scripts/services.sh" jars)
  ctx=$(mktemp -d)
  cp -r "$ROOT/infra/docker/kafka/." "$ctx/"
  mkdir "$ctx/libs" && cp "$libs"/*.jar "$ctx/libs/"
  build "$PREFIX/kafka:3.9.1" "$ctx"
  rm -rf "$ctx"
  say "built $PREFIX/kafka:3.9.1"
}

python() {
  build "$PREFIX/python:3.11" "$ROOT/infra/docker/python"
  say "built $PREFIX/python:3.11"
}

base
for name in "${wanted[@]}"; do
  case $name in
    postgres) tag=$PREFIX/postgres:15 ;;
    kafka) tag=$PREFIX/kafka:3.9.1 ;;
    python) tag=$PREFIX/python:3.11 ;;
  esac
  if [ -z "$force" ] && have "$tag"; then say "$tag is there"; else "$name"; fi
done
echo "XCLOUD_POSTGRES_IMAGE=$PREFIX/postgres:15"
echo "XCLOUD_KAFKA_IMAGE=$PREFIX/kafka:3.9.1"
echo "XCLOUD_PYTHON_IMAGE=$PREFIX/python:3.11"
