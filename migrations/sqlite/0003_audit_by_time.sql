-- repocrypt schema, version 3 (SQLite): `repocrypt audit list --since/--until` reads the
-- audit log by time. `at` is fixed-width UTC text (2026-01-31T12:00:00.000Z), so text
-- order is time order.

CREATE INDEX audit_log_by_at ON audit_log (at, id);
