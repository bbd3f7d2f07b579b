#!/usr/bin/env bash
# A Docker engine with Compose v2 for `make compose-test` and the testcontainers session.
# Idempotent: an engine that answers is used as it is. Otherwise, as root on Debian:
#   - installs docker.io (dockerd, containerd, runc) from Debian when dockerd is missing;
#   - installs the Compose v2 CLI plugin when `docker compose` is missing: from Debian when
#     it has a package for it, else built from its Go module (Debian 12 has only Compose v1);
#   - starts dockerd in the background (overlay2; log in /var/log/xcloud-dockerd.log) and
#     says so. It stays up for later runs; `scripts/docker-engine.sh stop` stops the one
#     started here.
# Ports: dockerd itself listens on no TCP port. Containers publish only where the caller
# asks; the tests here publish on 127.0.0.1 at ports the kernel picks (32768-60999), never
# the 254x2/291x2 ports of scripts/services.sh.
set -euo pipefail

COMPOSE_VERSION=${XCLOUD_COMPOSE_VERSION:-v2.29.7}
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
PIDFILE=/var/run/xcloud-dockerd.pid
LOG=/var/log/xcloud-dockerd.log

say() { printf 'docker-engine: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
answers() { timeout 10 docker info >/dev/null 2>&1; }

apt_install() {
  [ -n "${_APT_UPDATED:-}" ] || { apt-get update -qq; _APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_compose() {
  docker compose version >/dev/null 2>&1 && return
  if apt-cache show docker-compose-plugin >/dev/null 2>&1; then
    say "installing the Compose v2 plugin (apt-get)"
    apt_install docker-compose-plugin && docker compose version >/dev/null 2>&1 && return
  fi
  command -v go >/dev/null || die "docker compose v2 is missing and Go is not there to build it"
  say "building Docker Compose $COMPOSE_VERSION from its Go module (Debian 12 has only v1; once, a few minutes)"
  local gobin; gobin=$(mktemp -d)
  GOFLAGS=-mod=mod GOBIN="$gobin" CGO_ENABLED=0 go install -trimpath \
    -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
    "github.com/docker/compose/v2/cmd@$COMPOSE_VERSION"
  mkdir -p "$PLUGIN_DIR"
  install -m 0755 "$gobin/cmd" "$PLUGIN_DIR/docker-compose"
  rm -rf "$gobin"
  docker compose version >/dev/null || die "the Compose plugin does not run"
}

start() {
  if answers; then
    say "a Docker engine answers: using it"
  else
    [ "$(id -u)" = 0 ] || die "no Docker engine answers, and starting one needs root"
    command -v dockerd >/dev/null || { say "installing docker.io (apt-get)"; apt_install docker.io; }
    command -v docker >/dev/null || apt_install docker-cli
    say "no Docker engine answered: starting dockerd (log: $LOG)"
    setsid nohup dockerd --storage-driver=overlay2 --pidfile="$PIDFILE" \
      >>"$LOG" 2>&1 </dev/null &
    local i
    for i in $(seq 1 60); do
      answers && break
      [ "$i" = 60 ] && { tail -20 "$LOG" >&2; die "dockerd did not answer within 60 s"; }
      sleep 1
    done
    say "dockerd $(docker version --format '{{.Server.Version}}') is up"
  fi
  ensure_compose
}

stop() {
  [ -f "$PIDFILE" ] || { say "no dockerd started by this script"; return 0; }
  local pid; pid=$(cat "$PIDFILE")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  say "dockerd stopped"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
