-- repocrypt schema, version 2 (PostgreSQL): AK/SK credentials for SDK request signatures.

CREATE TABLE credentials (
    access_key TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    -- The secret key, AES-256-GCM sealed under a key derived from the root key,
    -- with the access key as associated data.
    secret     BYTEA NOT NULL,
    created_at TEXT NOT NULL
);

CREATE INDEX credentials_by_tenant ON credentials (tenant_id);
