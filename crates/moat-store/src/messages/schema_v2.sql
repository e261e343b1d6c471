-- Version 2: MQTT retained messages, the last one per topic, kept across
-- restarts (the broker holds them in memory and writes them behind).
CREATE TABLE retained (
    topic      TEXT NOT NULL UNIQUE,
    qos        INTEGER NOT NULL,
    payload    BLOB NOT NULL,
    properties BLOB NOT NULL,  -- MQTT 5 properties, encoded as in a packet
    expires_at INTEGER         -- µs since the Unix epoch; NULL: never
);
