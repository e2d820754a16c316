//! The database schema as code. `VERSION` is stored in `PRAGMA user_version`;
//! opening a file upgrades it arm by arm, in one transaction. A file from a
//! newer Attune is refused and left untouched.

use rusqlite::{Connection, Transaction};

use crate::error::{Error, Result};

/// Schema version this build writes.
pub(crate) const VERSION: i64 = 1;

/// The current schema, for a new file. Every table hangs off `tasks`, so
/// forgetting a task cascades; `features` is shared across tasks and keyed by
/// (text hash, model fingerprint), so a text is embedded once per model.
/// Unique keys lead with the text hash so they also serve lookups by text.
/// `features` keeps a rowid: a 1.5 KB vector overflows a WITHOUT ROWID row
/// (~1 KB local payload) into its own page, tripling the file.
const CREATE: &str = "
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    retention_max_examples INTEGER,
    retention_max_age_ms INTEGER,
    active_head INTEGER REFERENCES heads(id) ON DELETE SET NULL
);

CREATE TABLE examples (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    text_hash BLOB NOT NULL,
    label TEXT NOT NULL,
    weight REAL NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (text_hash, task_id, label)
);
CREATE INDEX examples_by_task_label ON examples(task_id, label);
CREATE INDEX examples_by_task_time ON examples(task_id, created_at);

CREATE TABLE label_descriptions (
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (task_id, label)
) WITHOUT ROWID;

CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    text TEXT NOT NULL,
    text_hash BLOB NOT NULL,
    metadata TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (task_id, key)
);
CREATE INDEX documents_by_hash ON documents(text_hash);

CREATE TABLE feedback (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    query TEXT,
    query_hash BLOB,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    signal TEXT NOT NULL CHECK (signal IN ('impression', 'click', 'skip', 'dwell', 'rating')),
    value REAL NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX feedback_by_task ON feedback(task_id, created_at);
CREATE INDEX feedback_by_document ON feedback(document_id);
CREATE INDEX feedback_by_query_hash ON feedback(query_hash);

CREATE TABLE features (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    text_hash BLOB NOT NULL,
    dim INTEGER NOT NULL,
    encoding INTEGER NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (text_hash, fingerprint)
);

CREATE TABLE heads (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    label_map TEXT NOT NULL,
    weights BLOB NOT NULL,
    report TEXT NOT NULL,
    metrics TEXT NOT NULL,
    trained_through_example INTEGER NOT NULL,
    stale INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    UNIQUE (task_id, version)
);

CREATE TABLE privacy_ledger (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    sampling_rate REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    steps INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// Brings `connection` to `VERSION`: creates a new file, upgrades an old one,
/// refuses a newer one without writing to it.
pub(crate) fn prepare(connection: &mut Connection) -> Result<()> {
    let found: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > VERSION {
        return Err(Error::DatabaseTooNew { found, supported: VERSION });
    }
    if found == VERSION {
        return Ok(());
    }
    let transaction = connection.transaction()?;
    if found == 0 {
        transaction.execute_batch(CREATE)?;
    } else {
        upgrade_from(&transaction, found)?;
    }
    transaction.pragma_update(None, "user_version", VERSION)?;
    transaction.commit()?;
    Ok(())
}

/// One arm per released version: each brings a version-`from` schema one
/// step closer to `VERSION`. Add an arm, and a frozen copy of the old schema
/// to `schema_history/`, with every change to `CREATE`.
fn upgrade_from(_transaction: &Transaction<'_>, from: i64) -> Result<()> {
    // Version 1 is the first: no arms yet. The next schema change adds
    // `1 => { ...; Ok(()) }` here.
    Err(Error::Storage(format!("no upgrade path from schema version {from}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(connection: &Connection) -> Vec<(String, String)> {
        let mut statement =
            connection.prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").unwrap();
        statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect()
    }

    /// Every frozen earlier schema upgrades to exactly what a new file gets.
    #[test]
    fn every_frozen_schema_upgrades_to_the_fresh_one() {
        let mut fresh = Connection::open_in_memory().unwrap();
        prepare(&mut fresh).unwrap();
        let history = [(1, include_str!("schema_history/v1.sql"))];
        assert_eq!(history.last().unwrap().0, VERSION, "freeze the current schema in schema_history/");
        for (version, sql) in history {
            let mut old = Connection::open_in_memory().unwrap();
            old.execute_batch(sql).unwrap();
            old.pragma_update(None, "user_version", version).unwrap();
            prepare(&mut old).unwrap();
            assert_eq!(schema_of(&old), schema_of(&fresh), "upgrade from version {version}");
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.pragma_update(None, "user_version", VERSION + 1).unwrap();
        let error = prepare(&mut connection).unwrap_err();
        assert!(
            matches!(error, Error::DatabaseTooNew { found, supported } if found == VERSION + 1 && supported == VERSION)
        );
    }
}
