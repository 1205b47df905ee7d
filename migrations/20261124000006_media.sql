-- Uploaded images (read model, written by the projector from MediaUploaded).
CREATE TABLE media (
    id               uuid PRIMARY KEY,
    owner_id         uuid NOT NULL,
    content_type     text NOT NULL,
    content_hash     text NOT NULL,
    size             bigint NOT NULL,
    width            integer NOT NULL,
    height           integer NOT NULL,
    thumbnail_size   bigint NOT NULL,
    thumbnail_width  integer NOT NULL,
    thumbnail_height integer NOT NULL,
    created_at       timestamptz NOT NULL
);
CREATE INDEX media_owner ON media (owner_id, id);

-- What each message shows of its images (the Attachment copies its MessageSent carries);
-- attachment_ids stays the list of their ids, indexed for "who may see this image".
ALTER TABLE messages ADD COLUMN attachments jsonb NOT NULL DEFAULT '[]';
CREATE INDEX messages_attachment_ids ON messages USING gin (attachment_ids);

-- Command side: an upload retried with the same Idempotency-Key returns the first one.
CREATE TABLE upload_idempotency (
    owner_id        uuid NOT NULL,
    idempotency_key text NOT NULL,
    media_id        uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, idempotency_key)
);
CREATE INDEX users_avatar ON users (avatar_media_id) WHERE avatar_media_id IS NOT NULL;
