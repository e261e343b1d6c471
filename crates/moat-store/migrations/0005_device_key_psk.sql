-- A device key's secret, sealed under a key derived from the master key, for
-- DTLS-PSK (the server needs the secret itself, not only its hash). NULL for
-- keys made before CoAP existed: those do not work for DTLS.
ALTER TABLE device_keys ADD COLUMN psk_sealed BLOB;
