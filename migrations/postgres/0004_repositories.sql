-- repocrypt schema, version 4 (PostgreSQL): repositories and their wrapped data keys,
-- and service principals (role `service`) among the credentials.

CREATE TABLE repositories (
    tenant_id         TEXT NOT NULL,
    repo_id           INTEGER NOT NULL CHECK (repo_id BETWEEN 1 AND 2147483647),
    repo_name         TEXT NOT NULL,
    full_path         TEXT NOT NULL,
    project_id        TEXT,
    project_name      TEXT,
    owner_id          BIGINT CHECK (owner_id >= 0),
    owner_iam_id      TEXT,
    owner_tenant_name TEXT,
    owner_nick_name   TEXT,
    owner_name        TEXT,
    encrypted         BOOLEAN NOT NULL,
    -- The CMK that wraps the data key, and the data key wrapped by it (the KMS's
    -- ciphertext, bound to the encryption context {tenant, repo}). The wrapped key is
    -- overwritten with NULL when the repository is crypto-shredded; the old row version
    -- stays in the table's pages until VACUUM reclaims it (README: "Crypto-shredding").
    cmk_key_id        TEXT,
    wrapped_key       BYTEA,
    shredded_at       TEXT,
    created_at        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, repo_id),
    CHECK (encrypted = (cmk_key_id IS NOT NULL)),
    CHECK (encrypted OR wrapped_key IS NULL),
    CHECK (shredded_at IS NULL OR wrapped_key IS NULL)
);

-- ListTenantEncryptedRepositories, by repository or owner name, ids breaking ties.
CREATE INDEX repositories_by_name ON repositories (tenant_id, repo_name COLLATE "C", repo_id)
    WHERE encrypted AND shredded_at IS NULL;
CREATE INDEX repositories_by_owner ON repositories (tenant_id, (COALESCE(owner_name, '')) COLLATE "C", repo_id)
    WHERE encrypted AND shredded_at IS NULL;

ALTER TABLE credentials DROP CONSTRAINT credentials_role_check;
ALTER TABLE credentials ADD CONSTRAINT credentials_role_check
    CHECK (role IN ('admin', 'member', 'service'));
