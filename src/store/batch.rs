//! Reads of many rows in one query (PostgreSQL's coalesced reads, background key-state
//! refreshes): each caller still gets exactly the answer its own query would have given.

use std::collections::{HashMap, HashSet};

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::db_error;
use crate::domain::{Error, Result};

/// The same store error for each of `n` callers (an `Error` is not `Clone`).
pub(crate) fn all_fail<V>(n: usize, what: &str, e: &sqlx::Error) -> Vec<Result<V>> {
    (0..n).map(|_| Err(db_error(what, e))).collect()
}

/// What an error says, for the log (a store error's detail, not its "internal error").
pub(crate) fn internal_detail(e: &Error) -> String {
    e.internal_detail()
        .map_or_else(|| e.to_string(), str::to_owned)
}

/// Each value once, in first-seen order: the list a batch query is given.
pub(crate) fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    values.filter(|v| seen.insert(*v)).collect()
}

/// The rows of a batch query by the text column `column` (the rows' key).
pub(crate) fn rows_by<'r, R>(
    rows: &'r [R],
    column: &str,
    what: &str,
) -> Result<HashMap<&'r str, &'r R>>
where
    R: Row,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<&str, _>(column)
                    .map_err(|e| db_error(what, e))?,
                row,
            ))
        })
        .collect()
}

/// One answer per caller from the rows of a batch query: `decode` runs once per caller,
/// so each gets exactly the result (or error) its own query would have given.
pub(crate) fn answer<K, R, V>(
    items: &[K],
    found: Result<HashMap<&str, &R>>,
    key: impl Fn(&K) -> &str,
    decode: impl Fn(&K, &R) -> Result<Option<V>>,
) -> Vec<Result<Option<V>>> {
    match found {
        Ok(rows) => items
            .iter()
            .map(|item| match rows.get(key(item)) {
                Some(row) => decode(item, row),
                None => Ok(None),
            })
            .collect(),
        Err(e) => {
            let detail = internal_detail(&e);
            items
                .iter()
                .map(|_| Err(Error::Store(detail.clone())))
                .collect()
        }
    }
}
