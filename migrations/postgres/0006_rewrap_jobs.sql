-- repocrypt schema, version 6 (PostgreSQL): rewrap jobs, which re-wrap a tenant's data keys
-- under its current CMK, and the repositories each could not rewrap.

CREATE TABLE rewrap_jobs (
    job_id        TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    total         BIGINT NOT NULL CHECK (total >= 0),
    done          BIGINT NOT NULL DEFAULT 0 CHECK (done >= 0),
    failed        BIGINT NOT NULL DEFAULT 0 CHECK (failed >= 0),
    -- Why the job stopped before its end (its target key became unusable).
    error         TEXT,
    actor         TEXT NOT NULL,
    request_id    TEXT,
    -- The runner that holds the job (a token per claim) and until when (Unix
    -- milliseconds): one runner at a time, across processes.
    lease_owner   TEXT,
    lease_until   BIGINT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    finished_at   TEXT,
    CHECK ((state = 'running') = (finished_at IS NULL))
);

-- One running job per tenant.
CREATE UNIQUE INDEX rewrap_jobs_one_running ON rewrap_jobs (tenant_id) WHERE state = 'running';

CREATE TABLE rewrap_failures (
    job_id  TEXT NOT NULL REFERENCES rewrap_jobs (job_id),
    repo_id INTEGER NOT NULL,
    reason  TEXT NOT NULL,
    at      TEXT NOT NULL,
    PRIMARY KEY (job_id, repo_id)
);
