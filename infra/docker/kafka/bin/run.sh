#!/bin/bash
# The official apache/kafka image's way of configuring by environment: every KAFKA_* variable
# (except the JVM ones) becomes a server property (KAFKA_NODE_ID -> node.id; `__` -> `_`,
# `___` -> `-`); the log directory is formatted once with CLUSTER_ID; then the broker runs.
set -euo pipefail
conf=/opt/kafka/config/server.properties
: >"$conf"
while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_HEAP_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_OPTS | KAFKA_LOG4J_OPTS | KAFKA_GC_LOG_OPTS) continue ;;
    KAFKA_*) ;;
    *) continue ;;
  esac
  key=${name#KAFKA_}
  key=${key,,}
  key=${key//___/-}
  key=${key//__/@}
  key=${key//_/.}
  key=${key//@/_}
  printf '%s=%s\n' "$key" "$value" >>"$conf"
done < <(env)
grep -q '^log.dirs=' "$conf" || echo "log.dirs=/var/lib/kafka/data" >>"$conf"
logdir=$(sed -n 's/^log.dirs=//p' "$conf" | cut -d, -f1)

# shellcheck disable=SC2206
java=(java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20}
  -Djava.awt.headless=true -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties
  ${KAFKA_OPTS:-} -cp '/opt/kafka/libs/*')
if [ ! -f "$logdir/meta.properties" ]; then
  "${java[@]}" kafka.tools.StorageTool format -c "$conf" --ignore-formatted \
    -t "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}"
fi
exec "${java[@]}" kafka.Kafka "$conf"
