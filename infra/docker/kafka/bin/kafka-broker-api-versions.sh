#!/bin/bash
# As in the Kafka distribution: the broker's API versions (used as a health check).
exec java -Xmx128m -Dlog4j.configuration=file:/opt/kafka/config/log4j-tools.properties \
  -cp '/opt/kafka/libs/*' kafka.admin.BrokerApiVersionsCommand "$@"
