-- Calls (read models, written by the projector from the Call events).
CREATE TABLE calls (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL,
    initiator_id    uuid NOT NULL,
    media           text NOT NULL CHECK (media IN ('audio', 'video')),
    state           text NOT NULL CHECK (state IN ('ringing', 'active', 'ended')),
    end_reason      text CHECK (end_reason IN ('completed', 'missed', 'declined', 'cancelled')),
    started_at      timestamptz NOT NULL,
    answered_at     timestamptz,
    ended_at        timestamptz,
    duration_ms     bigint
);
CREATE INDEX calls_conversation ON calls (conversation_id, started_at DESC, id DESC);

CREATE TABLE call_participants (
    call_id   uuid NOT NULL REFERENCES calls (id),
    user_id   uuid NOT NULL,
    position  integer NOT NULL,
    state     text NOT NULL CHECK (state IN ('ringing', 'joined', 'declined', 'left', 'missed')),
    joined_at timestamptz,
    left_at   timestamptz,
    audio     boolean NOT NULL DEFAULT false,
    video     boolean NOT NULL DEFAULT false,
    screen    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (call_id, user_id)
);

-- Command side: the durable ring timeout of each call, written by the same transaction as
-- its CallStarted event and deleted by whoever fires it.
CREATE TABLE call_ring_timeouts (
    call_id uuid PRIMARY KEY,
    due_at  timestamptz NOT NULL
);
CREATE INDEX call_ring_timeouts_due ON call_ring_timeouts (due_at);

CREATE FUNCTION schedule_ring_timeout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_ring_timeouts (call_id, due_at)
    VALUES (NEW.aggregate_id::uuid, (NEW.payload -> 'Started' ->> 'rings_until')::timestamptz)
    ON CONFLICT DO NOTHING;
    RETURN NEW;
END;
$$;

CREATE TRIGGER schedule_ring_timeout AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.aggregate_type = 'call' AND NEW.event_type = 'CallStarted')
    EXECUTE FUNCTION schedule_ring_timeout();
