-- 20,000 `MessageSent` events in statements of `bench.size` events each (as many conversations;
-- 1,000 unless set), inserted as the group commit inserts them, triggers and all; message ids
-- are time-ordered as `Uuid::now_v7` makes them. Prints the total time of the inserts. Run by
-- scripts/bench-insert.sh (SIZE=20 for the statements a busy group commit writes).
DO $$
DECLARE b int; t0 timestamptz; total interval := '0';
  size int := coalesce(nullif(current_setting('bench.size', true), ''), '1000')::int;
BEGIN
  FOR b IN 1..(20000 / size) LOOP
    t0 := clock_timestamp();
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT 'conversation', c.id::text, 1000 + b, 'MessageSent', '2.0',
      json_build_object('MessageSent', json_build_object('message_id', ('01930000-0000-7000-8000-' || lpad((b::bigint*100000+c.n)::text, 12, '0'))::uuid, 'seq', 1000+b,
        'sender_id', c.sender, 'client_message_id', 'loadgen-' || b || '-' || c.n, 'body', 'loadgen message with some text ' || b,
        'attachments', '[]'::json, 'reply_to_id', null, 'at', now()))::text::json,
      '{"request_id":"0193-abc","user_id":"0193f5d3-0000-7000-8000-000000000000"}'::json
    FROM (SELECT n, ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid AS id,
                 ('10000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid AS sender
            FROM generate_series(1, size) n) c;
    total := total + (clock_timestamp() - t0);
  END LOOP;
  RAISE NOTICE 'insert total %', total;
END $$;
