#!/usr/bin/env bash
# Sets up whatever is missing (Postgres, Redis, RabbitMQ) and runs `chatd serve` on
# CHAT_BIND (default 127.0.0.1:8080). Extra arguments go to `chatd serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_rust
ensure_services
exec cargo run --release --locked -p chatd -- serve "$@"
