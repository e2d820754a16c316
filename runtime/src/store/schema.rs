//! The database schema as code. `VERSION` is stored in `PRAGMA user_version`;
//! opening a file upgrades it arm by arm, in one transaction. A file from a
//! newer Attune is refused and left untouched.

use rusqlite::{Connection, Transaction};

use crate::error::{Error, Result};

/// Schema version this build writes.
pub(crate) const VERSION: i64 = 4;

/// The trunk-state cache table, shared by `CREATE` and version 4's step.
macro_rules! trunk_states_table {
    () => {
        "CREATE TABLE trunk_states (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    layers INTEGER NOT NULL,
    text_hash BLOB NOT NULL,
    tokens INTEGER NOT NULL,
    width INTEGER NOT NULL,
    states BLOB NOT NULL,
    UNIQUE (text_hash, fingerprint, layers)
);
"
    };
}

/// The current schema, for a new file. Every table hangs off `tasks`, so
/// forgetting a task cascades; `features` is shared across tasks and keyed by
/// (text hash, model fingerprint), so a text is embedded once per model.
/// Unique keys lead with the text hash so they also serve lookups by text.
/// `tasks.privacy` is the differential-privacy policy of a task trained
/// privately (JSON; it then stays private), `heads.private_*` the (ε, δ) of
/// a private head's task ledger when it was trained, `heads.origin` whether
/// the device trained it (`local`) or adopted it from federated rounds
/// (`shared`).
/// `trunk_states` caches, for tasks that adapt the backbone's top layers,
/// examples' token states below them (f16), keyed like `features` plus the
/// number of layers above the trunk.
/// `features` keeps a rowid: a 1.5 KB vector overflows a WITHOUT ROWID row
/// (~1 KB local payload) into its own page, tripling the file.
const CREATE: &str = concat!(
    "
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    retention_max_examples INTEGER,
    retention_max_age_ms INTEGER,
    active_head INTEGER REFERENCES heads(id) ON DELETE SET NULL,
    privacy TEXT
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

",
    trunk_states_table!(),
    "
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
    private_epsilon REAL,
    private_delta REAL,
    origin TEXT NOT NULL DEFAULT 'local' CHECK (origin IN ('local', 'shared')),
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
"
);

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

/// One step per released version: each brings a version-`from` schema to
/// `from + 1`. Add a step, and a frozen copy of the old schema to
/// `schema_history/`, with every change to `CREATE`.
fn upgrade_from(transaction: &Transaction<'_>, from: i64) -> Result<()> {
    (from..VERSION).try_for_each(|version| upgrade_step(transaction, version))
}

fn upgrade_step(transaction: &Transaction<'_>, from: i64) -> Result<()> {
    match from {
        // Version 2: privacy is recorded with tasks and heads. Heads trained
        // privately before carry their (ε, δ) in their report; a task with
        // private runs keeps a policy whose budget is what it has spent.
        1 => {
            transaction.execute_batch(
                "ALTER TABLE tasks ADD COLUMN privacy TEXT;
                 ALTER TABLE heads ADD COLUMN private_epsilon REAL;
                 ALTER TABLE heads ADD COLUMN private_delta REAL;",
            )?;
            copy_privacy_from_reports(transaction)?;
        }
        // Version 3: heads adopted from federated rounds are marked; every
        // earlier head was trained on the device.
        2 => transaction.execute_batch(
            "ALTER TABLE heads ADD COLUMN origin TEXT NOT NULL DEFAULT 'local' CHECK (origin IN ('local', 'shared'));",
        )?,
        // Version 4: the trunk-state cache of adapting tasks.
        3 => transaction.execute_batch(trunk_states_table!())?,
        _ => return Err(Error::Storage(format!("no upgrade path from schema version {from}"))),
    }
    Ok(())
}

/// Version 2's step, in Rust rather than SQL so that SQLite is built without
/// its JSON functions: each head's (ε, δ) from its report, then a policy for
/// every task with private runs whose budget is what it has spent.
fn copy_privacy_from_reports(transaction: &Transaction<'_>) -> Result<()> {
    let reports: Vec<(i64, String)> = transaction
        .prepare("SELECT id, report FROM heads")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (head, report) in reports {
        let Ok(report) = serde_json::from_str::<serde_json::Value>(&report) else { continue };
        let number = |pointer: &str| report.pointer(pointer).and_then(serde_json::Value::as_f64);
        transaction.execute(
            "UPDATE heads SET private_epsilon = ?2, private_delta = ?3 WHERE id = ?1",
            rusqlite::params![head, number("/privacy/epsilon"), number("/privacy/delta")],
        )?;
    }
    let spent: Vec<(i64, f64)> = transaction
        .prepare(
            "SELECT id, coalesce((SELECT max(private_epsilon) FROM heads WHERE heads.task_id = tasks.id), 0.0)
               FROM tasks WHERE id IN (SELECT task_id FROM privacy_ledger)",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (task, epsilon) in spent {
        let policy = serde_json::json!({ "epsilon": epsilon }).to_string();
        transaction.execute("UPDATE tasks SET privacy = ?2 WHERE id = ?1", rusqlite::params![task, policy])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table and index with its SQL, layout ignored: an added column
    /// lands beside the one before it, not on a line of its own.
    fn schema_of(connection: &Connection) -> Vec<(String, String)> {
        let mut statement =
            connection.prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").unwrap();
        let collapse = |sql: String| {
            let spaced = sql.split_whitespace().collect::<Vec<_>>().join(" ");
            spaced.replace(" ,", ",").replace("( ", "(").replace(" )", ")")
        };
        statement.query_map([], |row| Ok((row.get(0)?, collapse(row.get(1)?)))).unwrap().map(Result::unwrap).collect()
    }

    /// Every frozen earlier schema upgrades to exactly what a new file gets.
    #[test]
    fn every_frozen_schema_upgrades_to_the_fresh_one() {
        let mut fresh = Connection::open_in_memory().unwrap();
        prepare(&mut fresh).unwrap();
        let history = [
            (1, include_str!("schema_history/v1.sql")),
            (2, include_str!("schema_history/v2.sql")),
            (3, include_str!("schema_history/v3.sql")),
            (4, include_str!("schema_history/v4.sql")),
        ];
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
    fn version_1_heads_keep_their_privacy_through_the_upgrade() {
        let mut old = Connection::open_in_memory().unwrap();
        old.execute_batch(include_str!("schema_history/v1.sql")).unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        old.execute_batch(
            r#"INSERT INTO tasks (id, name, created_at) VALUES (1, 'private', 0), (2, 'public', 0);
               INSERT INTO heads (id, task_id, version, kind, format_version, fingerprint, label_map, weights,
                                  report, metrics, trained_through_example, created_at)
               VALUES (1, 1, 1, 'linear', 1, 'f', '[]', x'', '{"privacy":{"epsilon":1.5,"delta":1e-5}}', '{}', 0, 0),
                      (2, 1, 2, 'linear', 1, 'f', '[]', x'', '{"privacy":{"epsilon":2.25,"delta":1e-5}}', '{}', 0, 0),
                      (3, 2, 1, 'linear', 1, 'f', '[]', x'', '{}', '{}', 0, 0),
                      (4, 2, 2, 'linear', 1, 'f', '[]', x'', 'not json', '{}', 0, 0);
               INSERT INTO privacy_ledger (task_id, sampling_rate, noise_multiplier, steps, created_at)
               VALUES (1, 0.1, 1.0, 10, 0);"#,
        )
        .unwrap();
        prepare(&mut old).unwrap();
        let heads: Vec<(Option<f64>, Option<f64>)> = old
            .prepare("SELECT private_epsilon, private_delta FROM heads ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(heads, [(Some(1.5), Some(1e-5)), (Some(2.25), Some(1e-5)), (None, None), (None, None)]);
        let policies: Vec<Option<String>> = old
            .prepare("SELECT privacy FROM tasks ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let spent: serde_json::Value = serde_json::from_str(policies[0].as_deref().unwrap()).unwrap();
        assert_eq!(spent["epsilon"], 2.25, "the budget spent is the largest ε of the task's heads");
        assert_eq!(policies[1], None, "a task without private runs has no policy");
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
