-- repocrypt schema, version 1 (SQLite).

CREATE TABLE tenants (
    tenant_id     TEXT PRIMARY KEY,
    permit_public TEXT NOT NULL CHECK (permit_public IN ('allow', 'deny')),
    updated_at    TEXT NOT NULL
);

CREATE TABLE encryption_settings (
    id                         INTEGER PRIMARY KEY AUTOINCREMENT
                               CHECK (id BETWEEN 1 AND 2147483647),
    tenant_id                  TEXT NOT NULL UNIQUE,
    encryption_type            TEXT CHECK (encryption_type IN ('KMS', 'normal')),
    default_encryption_enabled INTEGER NOT NULL CHECK (default_encryption_enabled IN (0, 1)),
    cmk_key_id                 TEXT,
    cmk_key_name               TEXT,
    updated_at                 TEXT NOT NULL
);

CREATE TABLE kms_grants (
    tenant_id  TEXT PRIMARY KEY,
    granted_by TEXT NOT NULL,
    granted_at TEXT NOT NULL
);

CREATE TABLE projects (
    project_id TEXT PRIMARY KEY CHECK (length(project_id) = 32),
    tenant_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE project_members (
    project_id TEXT NOT NULL REFERENCES projects (project_id),
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    added_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, tenant_id, user_id)
);

CREATE TABLE kms_keys (
    key_id      TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    alias       TEXT NOT NULL,
    origin      TEXT NOT NULL CHECK (origin IN ('kms', 'external')),
    key_state   INTEGER NOT NULL CHECK (key_state BETWEEN 1 AND 5),
    material    BLOB,
    deletion_at INTEGER,
    created_at  TEXT NOT NULL,
    UNIQUE (tenant_id, alias)
);

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    actor      TEXT NOT NULL,
    request_id TEXT,
    action     TEXT NOT NULL,
    before     TEXT,
    after      TEXT
);

CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, id);
