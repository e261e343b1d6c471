-- Moat's first schema: identity and access, secrets, the audit log.
-- Times are unix milliseconds; ids are hyphenated UUIDv7 text, so ORDER BY id
-- is creation order; tags and metadata are JSON text.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    parent_id   TEXT REFERENCES tenants(id),
    path        TEXT NOT NULL,
    name        TEXT NOT NULL,
    tags        TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX tenants_sibling_name ON tenants (coalesce(parent_id, ''), name);
CREATE INDEX tenants_parent ON tenants (parent_id, id);

CREATE TABLE users (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id),
    username             TEXT NOT NULL UNIQUE,
    display_name         TEXT NOT NULL,
    role                 TEXT NOT NULL,
    disabled             INTEGER NOT NULL,
    password_hash        TEXT NOT NULL,
    sessions_valid_after INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX users_tenant ON users (tenant_id, id);

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    tags        TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX devices_name ON devices (tenant_id, name);
CREATE INDEX devices_tenant ON devices (tenant_id, id);

CREATE TABLE channels (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    name            TEXT NOT NULL,
    tags            TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    payload_policy  TEXT NOT NULL,
    retention_days  INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX channels_name ON channels (tenant_id, name);
CREATE INDEX channels_tenant ON channels (tenant_id, id);

CREATE TABLE connections (
    channel_id  TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tenant_id   TEXT NOT NULL,
    publish     INTEGER NOT NULL,
    subscribe   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (channel_id, device_id)
);
CREATE INDEX connections_device ON connections (device_id, channel_id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    created_by   TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    secret_hash  TEXT NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);

CREATE TABLE device_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    device_id    TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    secret_hash  TEXT NOT NULL
);
CREATE INDEX device_keys_device ON device_keys (device_id, id);

CREATE TABLE refresh_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family_id    TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE secrets (
    name   TEXT PRIMARY KEY,
    value  BLOB NOT NULL
);

CREATE TABLE audit (
    seq          INTEGER PRIMARY KEY,
    time         INTEGER NOT NULL,
    actor        TEXT NOT NULL,
    tenant_id    TEXT,
    -- The tenant's path when the event was written, for subtree filters.
    tenant_path  TEXT,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    source       TEXT,
    detail       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);
CREATE INDEX audit_tenant ON audit (tenant_path, seq);
CREATE INDEX audit_time ON audit (time);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
