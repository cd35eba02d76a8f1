-- repocrypt schema, version 4 (SQLite): repositories and their wrapped data keys, and
-- service principals (role `service`) among the credentials.

CREATE TABLE repositories (
    tenant_id         TEXT NOT NULL,
    repo_id           INTEGER NOT NULL CHECK (repo_id BETWEEN 1 AND 2147483647),
    repo_name         TEXT NOT NULL,
    full_path         TEXT NOT NULL,
    project_id        TEXT,
    project_name      TEXT,
    owner_id          INTEGER CHECK (owner_id >= 0),
    owner_iam_id      TEXT,
    owner_tenant_name TEXT,
    owner_nick_name   TEXT,
    owner_name        TEXT,
    encrypted         INTEGER NOT NULL CHECK (encrypted IN (0, 1)),
    -- The CMK that wraps the data key, and the data key wrapped by it (the KMS's
    -- ciphertext, bound to the encryption context {tenant, repo}). The wrapped key is
    -- overwritten with NULL when the repository is crypto-shredded; `secure_delete`
    -- zeroes the bytes it leaves behind in the page.
    cmk_key_id        TEXT,
    wrapped_key       BLOB,
    shredded_at       TEXT,
    created_at        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, repo_id),
    CHECK ((encrypted = 1) = (cmk_key_id IS NOT NULL)),
    CHECK (encrypted = 1 OR wrapped_key IS NULL),
    CHECK (shredded_at IS NULL OR wrapped_key IS NULL)
);

-- ListTenantEncryptedRepositories, by repository or owner name, ids breaking ties.
CREATE INDEX repositories_by_name ON repositories (tenant_id, repo_name, repo_id)
    WHERE encrypted = 1 AND shredded_at IS NULL;
CREATE INDEX repositories_by_owner ON repositories (tenant_id, COALESCE(owner_name, ''), repo_id)
    WHERE encrypted = 1 AND shredded_at IS NULL;

-- SQLite cannot change a CHECK constraint: the credentials table is rebuilt with the
-- new role.
CREATE TABLE credentials_v4 (
    access_key TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member', 'service')),
    secret     BLOB NOT NULL,
    created_at TEXT NOT NULL
);
INSERT INTO credentials_v4 (access_key, tenant_id, user_id, role, secret, created_at)
    SELECT access_key, tenant_id, user_id, role, secret, created_at FROM credentials;
DROP TABLE credentials;
ALTER TABLE credentials_v4 RENAME TO credentials;
CREATE INDEX credentials_by_tenant ON credentials (tenant_id);
