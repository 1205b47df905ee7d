-- The rebuild benchmarks' log (replay_bench, scripts/bench-replay.sh): 1,000 group
-- conversations, each created once, then messages up to `replay.events` events in all
-- (set it first: SET replay.events = 1000000).
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
 CROSS JOIN LATERAL generate_series(1, (current_setting('replay.events')::bigint - 1000) / 1000) AS m(seq)
 WHERE c.event_type = 'ConversationCreated';
