-- Provisioning: listing claim codes per tenant, finding device keys that
-- expire soon.
CREATE INDEX claim_codes_tenant ON claim_codes (tenant_id, id);
CREATE INDEX device_keys_expiry ON device_keys (expires_at) WHERE revoked_at IS NULL;
