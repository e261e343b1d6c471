-- The message database, version 1 (ADR 004). Its own SQLCipher file, so the
-- data path never waits on the identity database's lock.

-- The raw archive. `seq` is the rowid: the commit order, which readers page
-- by. AUTOINCREMENT keeps a seq from ever being handed out twice, even after
-- expiry deleted the newest rows; a cursor held by a client stays valid.
CREATE TABLE messages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           BLOB NOT NULL,     -- MessageId, 16 bytes
    tenant       BLOB NOT NULL,     -- TenantId, 16 bytes
    channel      BLOB NOT NULL,     -- ChannelId, 16 bytes
    subtopic     TEXT NOT NULL,
    publisher    TEXT NOT NULL,     -- Subject: device:<id>, user:<id>, apikey:<id>
    protocol     INTEGER NOT NULL,  -- columns.rs codes
    content_type INTEGER NOT NULL,  -- columns.rs codes
    received_at  INTEGER NOT NULL,  -- µs since the Unix epoch
    payload      BLOB NOT NULL
);
-- Time windows and expiry. Its entries end with the rowid, so the seq
-- bounds of a window come from it without touching the table.
CREATE INDEX messages_channel_time ON messages (channel, received_at);
-- A channel's messages in seq order: index entries end with the rowid, so
-- this is (channel, seq), and paging by the seq cursor is one range scan.
CREATE INDEX messages_channel_seq ON messages (channel);

-- Normalized SenML records, clustered so that one name's time range is one
-- contiguous range of the table.
CREATE TABLE records (
    channel   BLOB NOT NULL,
    name      TEXT NOT NULL,
    time      INTEGER NOT NULL,     -- µs since the Unix epoch, rounded
    seq       INTEGER NOT NULL,     -- the message's
    idx       INTEGER NOT NULL,     -- the record's place in its message
    publisher TEXT NOT NULL,        -- copied from the message, to filter
    subtopic  TEXT NOT NULL,        -- without reading it
    unit      TEXT,
    v         REAL,                 -- at most one of v, vs, vb, vd is set:
    vs        TEXT,                 -- none when the record carries only a sum
    vb        INTEGER,
    vd        BLOB,
    s         REAL,
    ut        REAL,
    PRIMARY KEY (channel, name, time, seq, idx)
) WITHOUT ROWID;
-- Queries across names, in cursor order. An index of a WITHOUT ROWID table
-- carries the primary key's columns anyway, so naming seq and idx here costs
-- nothing and spares a sort.
CREATE INDEX records_channel_time ON records (channel, time, seq, idx);
-- Expiry finds a message's records by seq. Seqs only grow, so every insert
-- lands at the index's right edge: cheap on the write path.
CREATE INDEX records_seq ON records (seq);
