-- Version 4: the raw archive in chunks (ADR 008). A chunk holds the
-- messages one commit wrote for one channel, encoded together (chunk.rs);
-- a new message's seq is chunk << 13 | its position, so seqs still grow in
-- commit order and AUTOINCREMENT keeps them from being handed out twice.
-- Each message's seq is also in the body, as a delta from first_seq: the
-- messages of version 3, moved here one to a chunk by the migration, keep
-- theirs, and so do the cursors clients hold. No chunk covers more than one
-- second of received_at, so a time window reads the chunks that start at
-- most a second before it.
CREATE TABLE message_chunks (
    chunk             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant            BLOB NOT NULL,     -- TenantId, 16 bytes
    channel           BLOB NOT NULL,     -- ChannelId, 16 bytes
    first_seq         INTEGER NOT NULL,
    first_received_at INTEGER NOT NULL,  -- µs since the Unix epoch
    last_received_at  INTEGER NOT NULL,
    count             INTEGER NOT NULL,  -- messages in body: counted without decoding
    body              BLOB NOT NULL
);
-- Paging by the seq cursor, and the loose scan of the stored channels.
CREATE INDEX message_chunks_channel_seq ON message_chunks (channel, first_seq);
-- Time windows and expiry.
CREATE INDEX message_chunks_channel_time ON message_chunks (channel, first_received_at);
