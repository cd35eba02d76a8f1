//! What differs between the two databases, for the queries of `store::sql`: one module
//! per database, side by side, each with the same items. A query that needs a new
//! difference adds an item to both.

/// What differs on SQLite, for `store::sql`.
pub(super) mod sqlite {
    pub(crate) type Db = sqlx::Sqlite;
    pub(crate) type Conn = <Db as sqlx::Database>::Connection;

    /// Takes the database's write lock at once, so that a read-then-write never fails to
    /// upgrade its lock; it also serializes every writer, so no other lock is needed.
    pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
    pub(crate) const FOR_UPDATE: &str = "";
    pub(crate) const FOR_SHARE: &str = "";
    /// SQLite compares text bytewise.
    pub(crate) const AUDIT_AT: &str = "at";
    /// What follows a text expression to order it bytewise: nothing, SQLite does.
    pub(crate) const BYTEWISE: &str = "";
    /// A boolean column's true (SQLite keeps booleans as 0 and 1).
    pub(crate) const TRUE: &str = "1";
    /// SQLite cannot UPDATE inside a WITH clause.
    pub(crate) const DATA_MODIFYING_CTE: bool = false;
    pub(crate) const SCHEMA_MIGRATIONS_TABLE: &str =
        "CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)";

    /// A list of values bound as one parameter: a JSON array, read with `json_each`.
    pub(crate) const IN_LIST: &str = "IN (SELECT value FROM json_each($1))";
    pub(crate) fn list(values: &[&str]) -> String {
        serde_json::Value::from(values).to_string()
    }

    pub(crate) async fn lock_tenants(
        _conn: &mut Conn,
        _scope: &str,
        _tenants: &[&str],
    ) -> sqlx::Result<()> {
        Ok(())
    }

    /// Event ids are in commit order already: SQLite's writers are serialised.
    pub(crate) async fn lock_events(_conn: &mut Conn) -> sqlx::Result<()> {
        Ok(())
    }

    pub(crate) async fn lock_migrations(_conn: &mut Conn) -> crate::domain::Result<()> {
        Ok(())
    }
}

/// What differs on PostgreSQL, for `store::sql`.
pub(super) mod postgres {
    use crate::store::Context;

    pub(crate) type Db = sqlx::Postgres;
    pub(crate) type Conn = <Db as sqlx::Database>::Connection;

    /// Writers lock what they read (`FOR UPDATE`, advisory locks), not the database.
    pub(crate) const BEGIN_WRITE: &str = "BEGIN";
    pub(crate) const FOR_UPDATE: &str = " FOR UPDATE";
    pub(crate) const FOR_SHARE: &str = " FOR SHARE";
    /// `COLLATE "C"` compares bytewise whatever the database's collation (and can use
    /// `audit_log_by_at`).
    pub(crate) const AUDIT_AT: &str = r#"at COLLATE "C""#;
    /// What follows a text expression to order it bytewise, whatever the collation.
    pub(crate) const BYTEWISE: &str = r#" COLLATE "C""#;
    pub(crate) const TRUE: &str = "TRUE";
    /// An UPDATE and the INSERT of its audit record in one statement (one round trip).
    pub(crate) const DATA_MODIFYING_CTE: bool = true;
    pub(crate) const SCHEMA_MIGRATIONS_TABLE: &str =
        "CREATE TABLE IF NOT EXISTS schema_migrations (
        version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)";

    /// A list of values bound as one parameter: an array.
    pub(crate) const IN_LIST: &str = "= ANY($1)";
    pub(crate) fn list<'a>(values: &[&'a str]) -> Vec<&'a str> {
        values.to_vec()
    }

    /// Serialise writers of these tenants' rows (`scope` names which rows) until the
    /// transaction ends, on every replica: one advisory lock per tenant, all taken by one
    /// query in the order of their keys, so that two transactions that share tenants never
    /// wait on each other in a cycle. The sorted subquery is not flattened into the outer
    /// query (it has ORDER BY and DISTINCT), so the locks are taken in its order.
    /// DISTINCT: two tenants whose names hash alike share one lock.
    pub(crate) async fn lock_tenants(
        conn: &mut Conn,
        scope: &str,
        tenants: &[&str],
    ) -> sqlx::Result<()> {
        let names: Vec<String> = tenants.iter().map(|t| format!("{scope}:{t}")).collect();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM (
                 SELECT DISTINCT hashtextextended(name, 0) AS k
                 FROM unnest($1::text[]) AS name ORDER BY k) AS locks",
        )
        .bind(&names)
        .execute(conn)
        .await
        .map(|_| ())
    }

    /// Advisory lock key that orders the writers of events (see `lock_events`).
    const EVENTS_LOCK: i64 = 0x7265_706f_6576_6e74; // "repoevnt"

    /// Keep event ids in commit order: taken before an event draws its id, held to the
    /// commit, so no id commits after a greater one. Taken last in every transaction that
    /// writes an event (after its tenant locks and row locks), so it closes no cycle.
    pub(crate) async fn lock_events(conn: &mut Conn) -> sqlx::Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENTS_LOCK)
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Advisory lock key that serialises migrations across replicas starting together.
    const MIGRATION_LOCK: i64 = 0x7265_706f_6372_7970; // "repocryp"

    /// Migrations are not bound by the connections' `statement_timeout` (`db_timeout`):
    /// one may rewrite a large table, and a replica waits here for another's.
    pub(crate) async fn lock_migrations(conn: &mut Conn) -> crate::domain::Result<()> {
        sqlx::query("SET LOCAL statement_timeout = 0")
            .execute(&mut *conn)
            .await
            .context("migration statement timeout")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(conn)
            .await
            .map(|_| ())
            .context("migration lock")
    }
}
