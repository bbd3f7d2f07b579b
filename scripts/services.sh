#!/usr/bin/env bash
# Local PostgreSQL and Apache Kafka (KRaft) as plain processes, for machines with no
# Docker engine. Idempotent: `start` leaves running services alone, installs what is
# missing, and returns only once each service really answers.
#
#   scripts/services.sh start [postgres|kafka]   start (both by default)
#   scripts/services.sh stop  [postgres|kafka]   stop cleanly
#   scripts/services.sh status                   what runs where
#   scripts/services.sh env                      print the variables to export
#   scripts/services.sh jars                     fetch the Kafka jars only; print their folder
#
# Ports: XCLOUD_PG_PORT (25432), XCLOUD_KAFKA_PORT (29092; controller = port + 1). Both lie
# below Linux's ephemeral range (32768-60999): a client that keeps reconnecting to a
# stopped server in that range can connect to itself and squat on the port.
# State lives under .cache/ (gitignored); .cache/services.env records where things are.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="$ROOT/.cache"
ENV_FILE="$CACHE/services.env"
PG_PORT=${XCLOUD_PG_PORT:-25432}
KAFKA_PORT=${XCLOUD_KAFKA_PORT:-29092}
KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
KAFKA_HOME="$CACHE/kafka"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_PID="$KAFKA_HOME/kafka.pid"
KAFKA_HEAP=${XCLOUD_KAFKA_HEAP:--Xms256m -Xmx768m}
PYTHON=${PYTHON:-"$ROOT/.venv/bin/python"}

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

mkdir -p "$CACHE"

# PostgreSQL refuses to run as root; its data must be reachable by the postgres user.
# A clone under a private folder (say /root) is not, so fall back to /var/tmp then.
pg_data_dir() {
  if id postgres >/dev/null 2>&1 && runuser -u postgres -- test -x "$CACHE" 2>/dev/null; then
    echo "$CACHE/pg"
  else
    echo "/var/tmp/xcloud-pg-$(printf '%s' "$ROOT" | md5sum | cut -c1-12)"
  fi
}

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
  done
  return 1
}

ensure_postgres_installed() {
  pg_bin >/dev/null && return
  log "installing PostgreSQL (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || die "could not install PostgreSQL"
  pg_bin >/dev/null || die "PostgreSQL binaries not found after install"
}

pg_ctl_() { runuser -u postgres -- "$(pg_bin)/pg_ctl" "$@"; }
psql_() { "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

start_postgres() {
  ensure_postgres_installed
  local data; data=$(pg_data_dir)
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising PostgreSQL data in $data"
    mkdir -p "$data" && chown postgres: "$data" && chmod 700 "$data"
    runuser -u postgres -- "$(pg_bin)/initdb" -D "$data" -U postgres --auth=trust \
      -E UTF8 --locale=C.UTF-8 >/dev/null
    cat "$ROOT/infra/postgres/postgresql.conf" >>"$data/postgresql.conf"
  fi
  if pg_ctl_ status -D "$data" >/dev/null 2>&1; then
    log "PostgreSQL already running"
  else
    port_busy "$PG_PORT" && die "port $PG_PORT is taken by another process; set XCLOUD_PG_PORT"
    pg_ctl_ start -D "$data" -w -t 60 -l "$data/server.log" \
      -o "-p $PG_PORT -k '' -c unix_socket_directories=''" >/dev/null \
      || { tail -20 "$data/server.log" >&2; die "PostgreSQL did not start"; }
  fi
  local i
  for i in $(seq 1 60); do
    psql_ -d postgres -c 'select 1' >/dev/null 2>&1 && break
    [ "$i" = 60 ] && die "PostgreSQL does not answer on port $PG_PORT"
    sleep 0.5
  done
  local db
  for db in xcloud xcloud_test; do
    psql_ -d postgres -tAc "select 1 from pg_database where datname = '$db'" | grep -q 1 \
      || psql_ -d postgres -c "create database $db"
  done
  log "PostgreSQL ready on 127.0.0.1:$PG_PORT"
}

stop_postgres() {
  pg_bin >/dev/null || return 0
  local data; data=$(pg_data_dir)
  [ -f "$data/PG_VERSION" ] || return 0
  if pg_ctl_ status -D "$data" >/dev/null 2>&1; then
    pg_ctl_ stop -D "$data" -m fast -w >/dev/null && log "PostgreSQL stopped"
  fi
}

ensure_kafka_jars() {
  [ -f "$KAFKA_LIBS/.complete" ] && return
  command -v java >/dev/null || {
    log "installing a Java runtime (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null
  }
  command -v mvn >/dev/null || {
    log "installing Maven (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null
  }
  log "fetching the Kafka broker's jars from Maven Central (once)"
  rm -rf "$KAFKA_LIBS"
  mvn -q -B -f "$ROOT/infra/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" \
    -Dmaven.repo.local="$CACHE/m2" || die "could not fetch the Kafka jars"
  touch "$KAFKA_LIBS/.complete"
}

kafka_running() { [ -f "$KAFKA_PID" ] && kill -0 "$(cat "$KAFKA_PID")" 2>/dev/null; }

kafka_java_cmd() {
  # shellcheck disable=SC2206
  KAFKA_JAVA=(java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j.configuration=file:$ROOT/infra/kafka/log4j.properties"
    "-Dkafka.logs.dir=$KAFKA_HOME/logs" -cp "$KAFKA_LIBS/*")
}

start_kafka() {
  ensure_kafka_jars
  local conf="$KAFKA_HOME/server.properties" data="$KAFKA_HOME/data"
  mkdir -p "$KAFKA_HOME/logs"
  sed -e "s|@BROKER_PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@DATA_DIR@|$data|g" "$ROOT/infra/kafka/server.properties.in" >"$conf"
  if kafka_running; then
    log "Kafka already running"
  else
    port_busy "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set XCLOUD_KAFKA_PORT"
    kafka_java_cmd
    if [ ! -f "$data/meta.properties" ]; then
      "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format -c "$conf" --ignore-formatted \
        -t "$("${KAFKA_JAVA[@]}" kafka.tools.StorageTool random-uuid)" >/dev/null
    fi
    # Its own session, so a Ctrl-C meant for `make run` reaches it only through `stop`.
    setsid nohup "${KAFKA_JAVA[@]}" kafka.Kafka "$conf" \
      >"$KAFKA_HOME/logs/stdout.log" 2>&1 </dev/null &
    echo $! >"$KAFKA_PID"
  fi
  [ -x "$PYTHON" ] || die "no Python environment at $PYTHON (run: make install)"
  "$PYTHON" "$ROOT/scripts/wait_kafka.py" "127.0.0.1:$KAFKA_PORT" 90 \
    || { tail -20 "$KAFKA_HOME/logs/server.log" >&2 || true; die "Kafka does not answer"; }
  log "Kafka ready on 127.0.0.1:$KAFKA_PORT"
}

stop_kafka() {
  kafka_running || { rm -f "$KAFKA_PID"; return 0; }
  local pid i; pid=$(cat "$KAFKA_PID")
  kill -TERM "$pid"
  for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$KAFKA_PID"
  log "Kafka stopped"
}

write_env() {
  cat >"$ENV_FILE" <<EOF
DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/xcloud
TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/xcloud_test
KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
EOF
}

what=${2:-all}
case "${1:-}" in
  start)
    case $what in postgres) start_postgres ;; kafka) start_kafka ;; *) start_postgres; start_kafka ;; esac
    write_env ;;
  stop)
    case $what in postgres) stop_postgres ;; kafka) stop_kafka ;; *) stop_kafka; stop_postgres ;; esac ;;
  status)
    if pg_bin >/dev/null && pg_ctl_ status -D "$(pg_data_dir)" >/dev/null 2>&1; then
      echo "postgres: running on 127.0.0.1:$PG_PORT"; else echo "postgres: stopped"; fi
    if kafka_running; then echo "kafka: running on 127.0.0.1:$KAFKA_PORT"; else echo "kafka: stopped"; fi ;;
  env) write_env; cat "$ENV_FILE" ;;
  jars) ensure_kafka_jars; echo "$KAFKA_LIBS" ;;
  *) echo "usage: $0 start|stop|status|env|jars [postgres|kafka]" >&2; exit 2 ;;
esac
