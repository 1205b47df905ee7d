-- socket-push's own view, written only by the push router: who is in each conversation at
-- the event being routed (kept in event order, so recipients are exact for every event).
CREATE TABLE push_members (
    conversation_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE TABLE push_positions (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    last_sequence  bigint NOT NULL,
    applied_count  bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);
