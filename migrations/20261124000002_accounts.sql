-- Command side of accounts: lookups and secrets that must never enter the event log.
-- Written only by command-api.

-- Unique claims on usernames and emails (lower-cased). A claim whose account never got its
-- Registered event (a crash in between) is taken over by the next registration.
CREATE TABLE account_identities (
    kind       text NOT NULL CHECK (kind IN ('username', 'email')),
    value      text NOT NULL,
    user_id    uuid NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value)
);
CREATE INDEX account_identities_user ON account_identities (user_id);

CREATE TABLE account_credentials (
    user_id       uuid PRIMARY KEY,
    password_hash text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A login session is one device's family of refresh tokens.
CREATE TABLE auth_sessions (
    session_id uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX auth_sessions_revoked ON auth_sessions (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES auth_sessions (session_id),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    spent_at   timestamptz
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- The durable record of revoked access tokens; Redis holds the same set for fast checks and
-- is reloaded from here whenever it has lost it.
CREATE TABLE revoked_access_tokens (
    jti        uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_access_tokens_expiry ON revoked_access_tokens (expires_at);

-- Read side, written only by the projector.
CREATE TABLE users (
    id              uuid PRIMARY KEY,
    username        text NOT NULL UNIQUE,
    email           text NOT NULL,
    display_name    text NOT NULL,
    display_name_lower text NOT NULL,
    bio             text,
    avatar_media_id uuid,
    login_count     bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX users_display_name ON users (display_name_lower text_pattern_ops);
CREATE INDEX users_username_prefix ON users (username text_pattern_ops);

-- Exactly-once bookkeeping of the projector: the last sequence applied per stream, and how
-- many events were applied (equal to last_sequence unless something was applied twice).
CREATE TABLE projection_positions (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    last_sequence  bigint NOT NULL,
    applied_count  bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);
