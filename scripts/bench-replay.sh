#!/usr/bin/env bash
# Times `chatd replay` (release) on a log of EVENTS events (default 1,000,000: 1,000 group
# conversations created, then messages), seeded straight into a scratch database with
# `chatd/examples/replay_seed.sql` (as `replay_bench` seeds), then vacuumed, so the rebuild is timed on its
# own. Runs the rebuild RUNS times (default 2) and `replay --verify` once; drops the database.
#
#   scripts/bench-replay.sh            # CHATD=path to use a prebuilt binary
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
events=${EVENTS:-1000000}
runs=${RUNS:-2}
chatd=${CHATD:-}
if [ -z "$chatd" ]; then
  cargo build --release --locked -p chatd
  chatd=./target/release/chatd
fi
database="chat_replay_$(date +%s)_$$"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database"
export CHAT_NAMESPACE="replay_$$" CHAT_JWT_SECRET="bench-secret-bench-secret-bench-secret!"
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $database"
trap 'psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $database"' EXIT
"$chatd" migrate >/dev/null
started=$(date +%s)
psql -h 127.0.0.1 -U postgres -q "$database" -c "SET replay.events = $events" \
  -f chatd/examples/replay_seed.sql -c "DELETE FROM outbox" -c "VACUUM ANALYZE"
echo "seeded $events events in $(( $(date +%s) - started )) s"
for _ in $(seq 1 "$runs"); do
  "$chatd" replay 2>&1 | grep -E '^replayed [0-9]+ events in'
done
"$chatd" replay --verify 2>&1 | tail -1
