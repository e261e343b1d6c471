-- A channel's largest accepted payload, in bytes; NULL takes the default.
ALTER TABLE channels ADD COLUMN max_payload INTEGER;
