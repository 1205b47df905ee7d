-- A user's contacts (everyone who shares a conversation with them) are read from push_members
-- by user: on every first connection and last disconnection (presence) and on every profile
-- change. Without this index each of those scanned the whole table.
CREATE INDEX push_members_user ON push_members (user_id, conversation_id);
