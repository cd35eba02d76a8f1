-- repocrypt schema, version 5 (PostgreSQL): change events, the feed storage nodes follow
-- (`GET /v4/repo-encryption/events`).
--
-- An event is written in the transaction of the change it reports. Ids grow in commit
-- order: every writer takes one advisory lock (`dialect::lock_events`) before it draws its
-- id and keeps it to its commit, so an id is never committed after a greater one and a
-- follower reading "after N" misses nothing.
CREATE TABLE events (
    id        BIGSERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    -- The event's JSON (`domain::events::Change`).
    body      TEXT NOT NULL,
    -- Fixed-width UTC text, so bytewise order is time order (pruning by age).
    at        TEXT NOT NULL
);
CREATE INDEX events_by_at ON events ((at COLLATE "C"));

-- The newest id pruned: a client resuming from an older id has missed events.
CREATE TABLE events_pruned (
    only_row       INTEGER PRIMARY KEY CHECK (only_row = 1),
    pruned_through BIGINT NOT NULL
);
INSERT INTO events_pruned (only_row, pruned_through) VALUES (1, 0);

-- The last key state recorded in an event, so that a change seen by several replicas
-- (each refreshing its own key-state cache) is raised once. `state` NULL: key gone.
CREATE TABLE key_states_seen (
    tenant_id TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    state     INTEGER,
    PRIMARY KEY (tenant_id, key_id)
);
