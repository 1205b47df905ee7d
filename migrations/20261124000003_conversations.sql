-- Command side of conversations. Written only by command-api (the index by the event store's
-- own trigger, in the same transaction as the events it indexes).

-- One direct conversation per pair of users, whoever asks first (user_low < user_high).
CREATE TABLE direct_pairs (
    user_low        uuid NOT NULL,
    user_high       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_low, user_high),
    CHECK (user_low < user_high)
);

-- What decisions need to know about each message. The unique index on client_message_id
-- makes a concurrent duplicate send fail its commit, so it is decided again and finds the
-- original: a send is idempotent for good, on any node.
CREATE TABLE message_index (
    message_id        uuid PRIMARY KEY,
    conversation_id   uuid NOT NULL,
    seq               bigint NOT NULL,
    sender_id         uuid NOT NULL,
    client_message_id text,
    event_sequence    bigint NOT NULL,
    deleted           boolean NOT NULL DEFAULT false,
    UNIQUE (conversation_id, seq)
);
CREATE UNIQUE INDEX message_index_client ON message_index (conversation_id, sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;

CREATE FUNCTION index_messages() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sent json;
BEGIN
    IF NEW.event_type = 'MessageSent' THEN
        sent := NEW.payload -> 'MessageSent';
        INSERT INTO message_index (message_id, conversation_id, seq, sender_id, client_message_id, event_sequence)
        VALUES ((sent ->> 'message_id')::uuid, NEW.aggregate_id::uuid, (sent ->> 'seq')::bigint,
                (sent ->> 'sender_id')::uuid, sent ->> 'client_message_id', NEW.sequence);
    ELSIF NEW.event_type = 'MessageDeleted' THEN
        UPDATE message_index SET deleted = true
         WHERE message_id = (NEW.payload -> 'MessageDeleted' ->> 'message_id')::uuid;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER index_messages AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.aggregate_type = 'conversation' AND NEW.event_type IN ('MessageSent', 'MessageDeleted'))
    EXECUTE FUNCTION index_messages();

-- Read side, written only by the projector.
CREATE TABLE conversations (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('direct', 'group')),
    title            text,
    owner_id         uuid NOT NULL,
    last_seq         bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    last_activity_at timestamptz NOT NULL
);

CREATE TABLE conversation_members (
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    user_id         uuid NOT NULL,
    role            text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at       timestamptz NOT NULL,
    delivered_seq   bigint NOT NULL DEFAULT 0,
    read_seq        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_members_user ON conversation_members (user_id);

CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    seq             bigint NOT NULL,
    sender_id       uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('text', 'image', 'call', 'system')),
    body            text,
    attachment_ids  uuid[] NOT NULL DEFAULT '{}',
    reply_to_id     uuid,
    system          jsonb,
    created_at      timestamptz NOT NULL,
    edited_at       timestamptz,
    deleted         boolean NOT NULL DEFAULT false,
    UNIQUE (conversation_id, seq)
);
CREATE INDEX messages_unread ON messages (conversation_id, seq) WHERE NOT deleted AND kind <> 'system';

-- Every move of a member's watermarks, for the times in GET /messages/{id}/receipts.
CREATE TABLE receipt_marks (
    conversation_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    delivered_seq   bigint NOT NULL,
    read_seq        bigint NOT NULL,
    at              timestamptz NOT NULL
);
CREATE INDEX receipt_marks_member ON receipt_marks (conversation_id, user_id, delivered_seq);
