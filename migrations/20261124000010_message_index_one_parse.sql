-- The message index's trigger read each field of a `MessageSent` payload with its own `->>`,
-- and every `->>` on a `json` value parses the text again: five parses per message.
-- `json_to_record` reads all the fields in one. Measured with scripts/bench-insert.sh (20
-- statements of 1,000 messages; docs/benchmarks.md, "Session 6"): an insert with every trigger
-- fell from about 19.7 µs to 15.8 µs per message; the same rows are indexed.
CREATE OR REPLACE FUNCTION index_message_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_index (message_id, conversation_id, seq, sender_id, client_message_id, event_sequence)
    SELECT sent.message_id, e.aggregate_id::uuid, sent.seq, sent.sender_id, sent.client_message_id, e.sequence
      FROM new_events e,
           json_to_record(e.payload -> 'MessageSent')
             AS sent (message_id uuid, seq bigint, sender_id uuid, client_message_id text)
     WHERE e.aggregate_type = 'conversation' AND e.event_type = 'MessageSent';
    -- Sends first, then deletions, so a message sent and deleted in one statement ends deleted.
    UPDATE message_index SET deleted = true
     WHERE message_id IN (SELECT (payload -> 'MessageDeleted' ->> 'message_id')::uuid
                            FROM new_events
                           WHERE aggregate_type = 'conversation' AND event_type = 'MessageDeleted');
    RETURN NULL;
END;
$$;
