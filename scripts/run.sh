#!/usr/bin/env bash
# `make run`: local services (unless DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS point
# elsewhere), migrations, a development credential, then `xcloud serve` in the
# foreground. Ctrl-C stops the server and whatever this script started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
XCLOUD="$ROOT/.venv/bin/xcloud"
started_here=()

if [ -z "${DATABASE_URL:-}" ] || [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  before=$(scripts/services.sh status)
  [[ $before == *"postgres: stopped"* ]] && started_here+=(postgres)
  [[ $before == *"kafka: stopped"* ]] && started_here+=(kafka)
  scripts/services.sh start
  # shellcheck disable=SC1091
  . .cache/services.env
  export DATABASE_URL=${DATABASE_URL} KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS}
fi

if [ -z "${XCLOUD_SECRET_KEY:-}" ]; then
  # A development key, made once and kept under .cache/ (never use it in production).
  [ -s .cache/dev-secret-key ] || { umask 077; "$ROOT/.venv/bin/python" -c \
    'import secrets; print(secrets.token_urlsafe(48))' >.cache/dev-secret-key; }
  XCLOUD_SECRET_KEY=$(cat .cache/dev-secret-key)
  export XCLOUD_SECRET_KEY
fi

"$XCLOUD" migrate
SERVICE_ID=dev-local
SECRET=$("$XCLOUD" clients add "$SERVICE_ID" 2>/dev/null | tail -1)
PORT=${XCLOUD_PORT:-8080}

cleanup() {
  trap - INT TERM EXIT
  [ -n "${server_pid:-}" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" || true
  for what in "${started_here[@]}"; do scripts/services.sh stop "$what" || true; done
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

cat <<MSG

  XCloud registry on http://127.0.0.1:$PORT   (Ctrl-C stops it)
  development credential:
    export XCLOUD_URL=http://127.0.0.1:$PORT XCLOUD_SERVICE_ID=$SERVICE_ID XCLOUD_SECRET=$SECRET
  try, in another terminal, after the export above:
    .venv/bin/xcloud fake 1 | .venv/bin/xcloud customers register -
    .venv/bin/xcloud customers list --limit 5
    curl -s http://127.0.0.1:$PORT/metrics | grep xcloud_http_requests_total

MSG
"$XCLOUD" serve &
server_pid=$!
wait "$server_pid"
