-- A global position for every stored event: the order of the audit log. Assigned at insert
-- (a sequence), so the log reads in the order the events were written.
ALTER TABLE events ADD COLUMN log_position bigserial;
CREATE UNIQUE INDEX events_log_position ON events (log_position);
CREATE INDEX events_actor ON events ((metadata ->> 'actor_id'));
