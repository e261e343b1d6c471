-- Version 3: MQTT persistent sessions kept across restarts (ADR 007). The
-- broker holds them in memory and writes changes behind; only sessions
-- that outlive their connection (a Session Expiry Interval above zero)
-- are here.
CREATE TABLE mqtt_sessions (
    owner     BLOB NOT NULL,    -- DeviceId, 16 bytes; empty: anonymous (development)
    client_id TEXT NOT NULL,
    expiry    INTEGER NOT NULL, -- Session Expiry Interval, seconds
    ended_at  INTEGER,          -- µs since the Unix epoch; NULL while connected
    queue     BLOB,             -- what it held when its connection ended (broker-encoded)
    will      BLOB,             -- a will waiting for its delay (broker-encoded)
    will_at   INTEGER,          -- when it is due, µs since the Unix epoch
    PRIMARY KEY (owner, client_id)
);
CREATE TABLE mqtt_subscriptions (
    owner     BLOB NOT NULL,
    client_id TEXT NOT NULL,
    filter    TEXT NOT NULL,
    options   INTEGER NOT NULL, -- packed by the broker
    id        INTEGER,          -- MQTT 5 Subscription Identifier
    PRIMARY KEY (owner, client_id, filter)
) WITHOUT ROWID;
-- Deliveries queued for an offline session since `queue` was saved, in
-- order; taken (deleted) when a connection resumes the session.
CREATE TABLE mqtt_queue (
    owner     BLOB NOT NULL,
    client_id TEXT NOT NULL,
    position  INTEGER NOT NULL,
    delivery  BLOB NOT NULL,    -- broker-encoded
    PRIMARY KEY (owner, client_id, position)
) WITHOUT ROWID;
