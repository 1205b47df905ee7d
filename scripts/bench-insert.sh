#!/usr/bin/env bash
# The cost of appending messages inside Postgres, without the rest of the path: 20,000
# `MessageSent` events in statements of SIZE (default 1,000; scripts/sql/insert-messages.sql)
# into a scratch database with every migration, and into one with the migrations before FROM
# (to compare a migration's effect). The two alternate, ROUNDS times each, from an empty table after a checkpoint.
#
#   scripts/bench-insert.sh                        # now against before migration 10
#   FROM=20261124000010 ROUNDS=5 scripts/bench-insert.sh
#   SIZE=20 scripts/bench-insert.sh                # small statements, as under load
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

from=${FROM:-20261124000010}
rounds=${ROUNDS:-5}
size=${SIZE:-1000}
psql() { command psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q "$@"; }
run_id=$(date +%s)-$$
before="chat_bench_insert_before_$$"
now="chat_bench_insert_now_$$"
cleanup() { for database in "$before" "$now"; do psql -d postgres -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
for database in "$before" "$now"; do psql -d postgres -c "CREATE DATABASE \"$database\""; done
for file in migrations/*.sql; do
  version=$(basename "$file" | cut -d_ -f1)
  psql -d "$now" -f "$file"
  if [ "$version" -lt "$from" ]; then psql -d "$before" -f "$file"; fi
done
echo "run $run_id: 20,000 MessageSent events per round in statements of $size; before = migrations before $from"
for round in $(seq 1 "$rounds"); do
  for database in "$before" "$now"; do
    total=$(psql -d "$database" -c "TRUNCATE events, outbox, message_index" -c "CHECKPOINT" \
      -c "SET bench.size = $size" -f scripts/sql/insert-messages.sql 2>&1 | sed -n 's/.*insert total //p')
    echo "round $round ${database%_$$}: $total"
  done
done
