-- Device identity: tenants' CAs, the certificates devices present, the codes
-- that register a tenant's own CA and that claim devices.

CREATE TABLE authorities (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    not_after    INTEGER NOT NULL,
    jit          TEXT NOT NULL,
    cert_pem     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (tenant_id, fingerprint)
);
CREATE INDEX authorities_tenant ON authorities (tenant_id, id);

-- No foreign key to devices: a deleted device's certificates stay, revoked,
-- for the CRL until they expire.
CREATE TABLE certificates (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    tenant_path       TEXT NOT NULL,
    device_id         TEXT NOT NULL,
    authority_id      TEXT,
    serial            TEXT NOT NULL,
    fingerprint       TEXT NOT NULL UNIQUE,
    subject           TEXT NOT NULL,
    key_algorithm     TEXT NOT NULL,
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    origin            TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    revoked_at        INTEGER,
    revocation_reason TEXT,
    cert_pem          TEXT NOT NULL
);
CREATE INDEX certificates_device ON certificates (device_id, id);
CREATE INDEX certificates_authority ON certificates (authority_id, revoked_at);
CREATE INDEX certificates_expiry ON certificates (not_after);

CREATE TABLE registration_codes (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    code        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE claim_codes (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    code_hash   TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    claimed_at  INTEGER,
    claimed_by  TEXT,
    used_at     INTEGER
);
