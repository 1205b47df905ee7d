#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test against real Postgres, Redis and
# RabbitMQ (started or installed first when missing). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_rust
ensure_services

# Databases left by test runs that were killed (their names carry a UUIDv7, so their age):
# drop those older than an hour. Live runs are younger and keep theirs.
psql -h 127.0.0.1 -U postgres -d postgres -Atqc "
  SELECT datname FROM pg_database
   WHERE datname ~ '^chat_test_[0-9a-f]{32}$'
     AND ('x' || substr(datname, 11, 12))::bit(48)::bigint < (extract(epoch FROM now()) * 1000 - 3600000)" |
  while read -r name; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" || true; done

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --profile ci
else
  cargo test --locked --workspace
fi
