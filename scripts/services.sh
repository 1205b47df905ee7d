#!/usr/bin/env bash
# Makes sure Postgres, Redis and RabbitMQ answer on their standard local ports: starts each
# one that is installed but stopped, and installs it from the distribution's packages when it
# is missing (Debian/Ubuntu, as root or with sudo). Sourced by run.sh and test.sh.
set -euo pipefail

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

apt_updated=0
install_packages() {
  command -v apt-get >/dev/null || { echo "cannot install $* here: no apt-get; install it yourself" >&2; return 1; }
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # port name
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 1; done
  echo "$2 did not come up on port $1" >&2; return 1
}

ensure_postgres() {
  port_open 5432 && return 0
  command -v pg_ctlcluster >/dev/null || install_packages postgresql
  local version; version=$(ls /etc/postgresql | sort -V | tail -n1)
  # Local trust auth for the postgres user, as on the development and CI machines.
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for_port 5432 postgres
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null || install_packages redis-server
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for_port 6379 redis
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  command -v rabbitmq-server >/dev/null || install_packages rabbitmq-server
  as_root rabbitmq-server -detached || true
  wait_for_port 5672 rabbitmq
}

ensure_services() {
  ensure_postgres
  ensure_redis
  ensure_rabbitmq
}

# Headless Chromium, for the test that renders the API reference page in a real browser.
ensure_chromium() {
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null || install_packages chromium
}

ensure_rust() {
  command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2; return 1; }
}

# coturn's turnserver, for the tests that relay WebRTC through TURN. Each test starts its own
# server on a free port, so the system service the package enables (on 3478, where an init
# system is running) is stopped and disabled right after installing it.
ensure_coturn() {
  command -v turnserver >/dev/null && return 0
  install_packages coturn
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now coturn >/dev/null 2>&1 || true
  elif command -v service >/dev/null; then
    as_root service coturn stop >/dev/null 2>&1 || true
  fi
}

# An S3-compatible server for the test that stores uploads in a bucket: moto's server mode,
# from PyPI (MinIO is not packaged for Debian; compose.yaml runs the real MinIO).
ensure_s3_server() {
  command -v moto_server >/dev/null && return 0
  command -v pip3 >/dev/null || install_packages python3-pip
  pip3 install -q 'moto[server]==5.2.1' >/dev/null 2>&1 ||
    pip3 install -q --break-system-packages 'moto[server]==5.2.1' >/dev/null
}

# remove_run_state DATABASE NAMESPACE: drops a benchmark run's database, its Redis keys
# (`NAMESPACE:*`) and its broker queues and exchanges (`NAMESPACE.*`), whose durable queues
# would otherwise keep their messages. rabbitmqctl reads stdin: without </dev/null the first
# call in a loop would eat the rest of the list.
remove_run_state() {
  local database=$1 namespace=$2
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 || true
  if command -v redis-cli >/dev/null; then
    redis-cli --scan --pattern "$namespace:*" | xargs -r -n 500 redis-cli del >/dev/null 2>&1 || true
  fi
  if command -v rabbitmqctl >/dev/null; then
    { rabbitmqctl -q list_queues name </dev/null 2>/dev/null || true; } | { grep -E "^$namespace\." || true; } |
      while read -r queue; do rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null 2>&1 || true; done
    { rabbitmqctl -q list_exchanges name </dev/null 2>/dev/null || true; } | { grep -E "^$namespace\." || true; } |
      while read -r exchange; do
        rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$exchange\">>), false, <<\"bench\">>)." </dev/null >/dev/null 2>&1 || true
      done
  fi
}

# export_run_settings DATABASE NAMESPACE MEDIA_DIR: the settings every benchmark run of chatd
# shares: its scratch database, namespace and media directory, a fixed JWT secret, and the
# per-user send limit out of the way (the load is the point).
export_run_settings() {
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$1"
  export CHAT_NAMESPACE="$2"
  export CHAT_MEDIA_STORE="$3"
  export CHAT_JWT_SECRET="bench-secret-bench-secret-bench-secret!"
  export CHAT_SENDS_PER_10_SECONDS=1000000
  export CHAT_PASSWORD_HASH_CONCURRENCY=2
}
