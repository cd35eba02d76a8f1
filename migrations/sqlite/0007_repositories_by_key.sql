-- repocrypt schema (SQLite): the repositories that depend on a CMK, for the impact interlock
-- (`repocrypt kms impact`, ListTenantCmkRepositories, `kms disable-key` refusing while any
-- exist), read by key and paged by id.

CREATE INDEX repositories_by_key ON repositories (tenant_id, cmk_key_id, repo_id)
    WHERE encrypted = 1 AND shredded_at IS NULL;
