-- The group commit inserts the events of many commands with one statement. Row triggers would
-- still run once per event; these run once per statement over the statement's new rows.
--
-- The outbox keeps only each event's key: the relay reads the event itself from `events`
-- (its primary key). A row is written once by the trigger and rewritten once when it is marked
-- published, so copying the payload into it wrote every payload to the WAL three times.
ALTER TABLE outbox DROP COLUMN event_type, DROP COLUMN event_version,
                   DROP COLUMN payload, DROP COLUMN metadata;
-- The outbox holds only what is in flight, and its two readers by stream (pruning, read-model
-- lag) visit every row of it anyway: an index by stream only cost each insert.
DROP INDEX outbox_stream;

-- Outbox ids follow each stream's sequence order: the relay publishes in id order.
CREATE OR REPLACE FUNCTION events_to_outbox_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (aggregate_type, aggregate_id, sequence)
    SELECT aggregate_type, aggregate_id, sequence
      FROM new_events
     ORDER BY aggregate_type, aggregate_id, sequence;
    RETURN NULL;
END;
$$;

DROP TRIGGER events_to_outbox ON events;
DROP FUNCTION events_to_outbox();
CREATE TRIGGER events_to_outbox AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_to_outbox_rows();

-- Sends first, then deletions, so a message sent and deleted in one statement ends deleted.
CREATE OR REPLACE FUNCTION index_message_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_index (message_id, conversation_id, seq, sender_id, client_message_id, event_sequence)
    SELECT (sent ->> 'message_id')::uuid, aggregate_id::uuid, (sent ->> 'seq')::bigint,
           (sent ->> 'sender_id')::uuid, sent ->> 'client_message_id', sequence
      FROM (SELECT aggregate_id, sequence, payload -> 'MessageSent' AS sent
              FROM new_events
             WHERE aggregate_type = 'conversation' AND event_type = 'MessageSent') AS sends;
    UPDATE message_index SET deleted = true
     WHERE message_id IN (SELECT (payload -> 'MessageDeleted' ->> 'message_id')::uuid
                            FROM new_events
                           WHERE aggregate_type = 'conversation' AND event_type = 'MessageDeleted');
    RETURN NULL;
END;
$$;

DROP TRIGGER index_messages ON events;
DROP FUNCTION index_messages();
CREATE TRIGGER index_messages AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION index_message_rows();

-- One snapshot per aggregate. cqrs-es loads a snapshot and then the events after it with two
-- statements; a writer that commits in between makes the loader see its events but not its
-- first snapshot, and a second first snapshot could then be inserted beside it (the key
-- includes last_sequence), after which every later snapshot update matched two rows and
-- failed. With this index the second insert is a conflict: the command is decided again on a
-- fresh load. A snapshot is a cache of the log, so the older of any two is dropped.
DELETE FROM snapshots s USING snapshots t
 WHERE s.aggregate_type = t.aggregate_type AND s.aggregate_id = t.aggregate_id
   AND s.last_sequence < t.last_sequence;
CREATE UNIQUE INDEX snapshots_one_per_aggregate ON snapshots (aggregate_type, aggregate_id);
