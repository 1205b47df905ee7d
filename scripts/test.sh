#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test against real Postgres, Redis and
# RabbitMQ (started or installed first when missing). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_rust
ensure_services
ensure_chromium
ensure_coturn
ensure_s3_server

# Databases left by test runs that were killed (their names carry a UUIDv7, so their age):
# drop those older than an hour. Live runs are younger and keep theirs.
psql -h 127.0.0.1 -U postgres -d postgres -Atqc "
  SELECT datname FROM pg_database
   WHERE datname ~ '^chat_test_[0-9a-f]{32}$'
     AND ('x' || substr(datname, 11, 12))::bit(48)::bigint < (extract(epoch FROM now()) * 1000 - 3600000)" |
  while read -r name; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" || true; done

# Their broker queues likewise (namespace test_<uuidv7>), where rabbitmqctl is at hand.
if command -v rabbitmqctl >/dev/null; then
  now_ms=$(( $(date +%s) * 1000 ))
  { rabbitmqctl -q list_queues name 2>/dev/null || true; } | { grep -E '^test_[0-9a-f]{32}\.' || true; } | while read -r queue; do
    created_ms=$(( 16#${queue:5:12} ))
    if [ $(( now_ms - created_ms )) -gt 3600000 ]; then rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null 2>&1 || true; fi
  done
fi

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --profile ci
else
  cargo test --locked --workspace
fi
