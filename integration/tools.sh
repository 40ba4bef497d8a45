#!/usr/bin/env bash
# The tools some tests check Baker's files with, beside the brokers:
# - the client libraries of integration/clients (npm ci, from its lock file);
# - kubernetes-validate (PyPI), in a venv under the state directory;
# - systemd-analyze (Debian's systemd package), when missing;
# - Debian's Chromium, for the dashboard's browser test, when missing.
# Idempotent; run by integration/run.sh. Prints where each is.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE_DIR="${BAKER_BROKER_STATE:-/var/tmp/baker-brokers}"
KUBERNETES_VALIDATE_VERSION="${BAKER_KUBERNETES_VALIDATE_VERSION:-1.37.0}"
TOOLS_VENV="$STATE_DIR/tools-venv"

log() { printf '[tools] %s\n' "$*" >&2; }
die() { printf '[tools] ERROR: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

command -v npm >/dev/null || die "npm not found: install Node.js and npm (integration/clients needs them)"
npm ci --prefix integration/clients --no-audit --no-fund --loglevel=error >/dev/null \
  || die "'npm ci --prefix integration/clients' failed"
log "client libraries installed in integration/clients/node_modules"

if ! "$TOOLS_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI into $TOOLS_VENV"
  mkdir -p "$STATE_DIR"
  python3 -m venv "$TOOLS_VENV" || die "cannot create a Python venv at $TOOLS_VENV (install python3-venv)"
  "$TOOLS_VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    || die "'pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION' failed"
fi
printf '%s\n' "$TOOLS_VENV/bin/kubernetes-validate" >"$STATE_DIR/kubernetes-validate-bin"

apt_install() {
  command -v apt-get >/dev/null || die "$1 not found and no apt-get: install it"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { as_root apt-get update -qq >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } \
    || die "'apt-get install $*' failed"
}

if ! command -v chromium >/dev/null; then
  log "installing chromium (Debian's, headless, for tests/dashboard.rs)"
  apt_install chromium
fi

if ! command -v systemd-analyze >/dev/null; then
  log "installing systemd (for systemd-analyze)"
  apt_install systemd
fi
