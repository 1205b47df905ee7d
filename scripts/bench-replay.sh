#!/usr/bin/env bash
# Times `chatd replay` (release) on a log of EVENTS events (default 1,000,000: 1,000 group
# conversations created, then messages), seeded straight into a scratch database with the
# same SQL as `chatd/examples/replay_bench.rs`, then vacuumed, so the rebuild is timed on its
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
psql -h 127.0.0.1 -U postgres -q "$database" <<SQL
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
 SELECT 'conversation', c.id::text, 1, 'ConversationCreated', '1.0',
        json_build_object('Created', json_build_object(
            'conversation_id', c.id, 'kind', 'group', 'title', 'bench', 'owner_id', c.owner,
            'members', json_build_array(json_build_array(c.owner, 'owner'), json_build_array(c.member, 'member')),
            'at', '2026-11-24T10:00:00Z')),
        json_build_object('actor_id', c.owner, 'request_id', 'bench', 'recorded_at', '2026-11-24T10:00:00Z')
   FROM (SELECT gen_random_uuid() AS id, gen_random_uuid() AS owner, gen_random_uuid() AS member
           FROM generate_series(1, 1000)) c;
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
 SELECT 'conversation', c.aggregate_id, m.seq + 1, 'MessageSent', '1.0',
        json_build_object('MessageSent', json_build_object(
            'message_id', gen_random_uuid(), 'seq', m.seq, 'sender_id', c.payload -> 'Created' -> 'owner_id',
            'client_message_id', null, 'body', 'a message of ordinary length, about sixty characters long',
            'attachment_ids', json_build_array(), 'reply_to_id', null, 'at', '2026-11-24T10:00:01Z')),
        json_build_object('actor_id', c.payload -> 'Created' -> 'owner_id', 'request_id', 'bench', 'recorded_at', '2026-11-24T10:00:01Z')
   FROM events c
   CROSS JOIN LATERAL generate_series(1, ($events - 1000) / 1000) AS m(seq)
  WHERE c.event_type = 'ConversationCreated';
DELETE FROM outbox;
VACUUM ANALYZE;
SQL
echo "seeded $events events in $(( $(date +%s) - started )) s"
for _ in $(seq 1 "$runs"); do
  "$chatd" replay 2>&1 | grep -E '^replayed [0-9]+ events in'
done
"$chatd" replay --verify 2>&1 | tail -1
