//! The user's private data in one SQLite file on the device: tasks,
//! labelled examples, documents, feedback, cached features and trained heads.
//!
//! One writer connection takes closure-scoped transactions that commit only
//! when the closure succeeds; readers use their own connections and, thanks
//! to WAL, never wait for the writer. The store knows nothing of ONNX: it
//! keeps texts, vectors and blobs.

mod examples;
mod features;
mod heads;
mod items;
mod rights;
mod schema;
mod trunk_states;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use examples::{AddOutcome, Example, LabelCount, NewExample};
pub use features::VectorEncoding;
pub use heads::{HeadInfo, HeadPrivacy, KEPT_HEAD_VERSIONS, LedgerEntry, NewHead, SaveAs, StoredHead};
pub use items::{Document, FeedbackEvent, NewDocument, NewFeedback, Signal};
pub use rights::{Forget, ForgetOutcome, Retention};
pub use trunk_states::{TrunkKey, TrunkStateRows};

use crate::error::{Error, Result};

/// Page cache per connection, in KiB (SQLite's negative `cache_size`).
const PAGE_CACHE_KIB: i64 = -16 * 1024;

/// Readers kept open for reuse; more are opened when callers overlap.
const IDLE_READERS: usize = 4;

/// A key for encryption at rest (cargo feature `encryption`). Its bytes are
/// wiped from memory when the last copy is dropped.
#[derive(Clone)]
pub struct EncryptionKey(#[cfg_attr(not(feature = "encryption"), allow(dead_code))] Zeroizing<String>);

impl EncryptionKey {
    /// A passphrase, stretched by SQLCipher's key derivation on every open
    /// (tenths of a second per connection).
    pub fn passphrase(secret: impl Into<String>) -> Result<Self> {
        let secret = Zeroizing::new(secret.into());
        if secret.is_empty() {
            return Err(Error::EncryptionKey("the key is empty".into()));
        }
        // Quoted for the PRAGMA; a quote inside is doubled. Built in place,
        // with room for the worst case, so no unwiped copy is ever made.
        let mut quoted = Zeroizing::new(String::with_capacity(secret.len() * 2 + 2));
        quoted.push('\'');
        for c in secret.chars() {
            quoted.push(c);
            if c == '\'' {
                quoted.push('\'');
            }
        }
        quoted.push('\'');
        Ok(Self(quoted))
    }

    /// A random 256-bit key, as the Android Keystore or the iOS Keychain
    /// keep them: used as is, without key derivation.
    pub fn raw(bytes: &[u8; 32]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut literal = Zeroizing::new(String::with_capacity(2 * bytes.len() + 5));
        literal.push_str("\"x'");
        for byte in bytes {
            literal.push(char::from(HEX[usize::from(byte >> 4)]));
            literal.push(char::from(HEX[usize::from(byte & 15)]));
        }
        literal.push_str("'\"");
        Self(literal)
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(…)")
    }
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Encrypts the file at rest; the same key must be given on every open.
    pub encryption_key: Option<EncryptionKey>,
    /// How long a writer waits for another process's lock before failing.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { encryption_key: None, busy_timeout: Duration::from_secs(5) }
    }
}

/// Identifies a task inside one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId(pub(crate) i64);

/// A task and how much it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    pub name: String,
    pub examples: u64,
    pub labels: u64,
    pub documents: u64,
    pub feedback: u64,
    pub retention: Retention,
    pub active_head_version: Option<u32>,
    /// Examples' texts with cached trunk states (tasks that adapt the
    /// backbone's top layers), and those states' bytes.
    pub trunk_states: u64,
    pub trunk_state_bytes: u64,
}

/// The on-device database. `Send + Sync`: share it behind an `Arc`.
pub struct Store {
    path: PathBuf,
    options: StoreOptions,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, upgrading an older
    /// schema. A file that is not a database, was written by a newer Attune,
    /// or needs another key gives a typed error and is not modified.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Self> {
        let mut writer = connect(path, options, true)?;
        schema::prepare(&mut writer)?;
        // WAL lets readers work while the writer commits; set after the
        // schema check so a refused file is never converted.
        writer.pragma_update(None, "journal_mode", "WAL")?;
        Ok(Self {
            path: path.to_path_buf(),
            options: options.clone(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` in one write transaction: committed when it returns `Ok`,
    /// rolled back otherwise. Writers take turns.
    pub(crate) fn write<T>(&self, work: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut connection = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = work(&transaction)?;
        transaction.commit()?;
        Ok(value)
    }

    /// Runs `work` on a consistent snapshot, without waiting for the writer.
    pub(crate) fn read<T>(&self, work: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let idle = self.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => connect(&self.path, &self.options, false)?,
        };
        let outcome = connection
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(Error::from)
            .and_then(|transaction| work(&transaction));
        let mut idle = self.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < IDLE_READERS {
            idle.push(connection);
        }
        outcome
    }

    /// The task called `name`, created when missing.
    pub fn ensure_task(&self, name: &str) -> Result<TaskId> {
        validate_name(name)?;
        self.write(|tx| {
            tx.execute("INSERT OR IGNORE INTO tasks (name, created_at) VALUES (?1, ?2)", (name, now_ms()))?;
            Ok(TaskId(tx.query_row("SELECT id FROM tasks WHERE name = ?1", [name], |row| row.get(0))?))
        })
    }

    /// The task called `name`, or `Error::UnknownTask`.
    pub fn task_id(&self, name: &str) -> Result<TaskId> {
        self.read(|tx| task_id(tx, name))
    }

    /// Every task with its counts.
    pub fn tasks(&self) -> Result<Vec<TaskInfo>> {
        self.read(|tx| {
            let names: Vec<String> = tx
                .prepare("SELECT name FROM tasks ORDER BY name")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            names.iter().map(|name| task_info(tx, name)).collect()
        })
    }

    /// SQLite's own consistency check; `Ok` when the file is sound.
    pub fn integrity_check(&self) -> Result<()> {
        self.read(|tx| {
            let verdict: String = tx.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
            match verdict.as_str() {
                "ok" => Ok(()),
                _ => Err(Error::DatabaseUnreadable(format!("integrity check: {verdict}"))),
            }
        })
    }

    /// Counts and settings of one task.
    pub fn task(&self, name: &str) -> Result<TaskInfo> {
        self.read(|tx| task_info(tx, name))
    }
}

fn task_info(tx: &Transaction<'_>, name: &str) -> Result<TaskInfo> {
    let id = task_id(tx, name)?;
    let count = |sql: &str| -> Result<u64> { Ok(tx.query_row(sql, [id.0], |row| row.get::<_, i64>(0))? as u64) };
    let (max_examples, max_age_ms, active): (Option<i64>, Option<i64>, Option<i64>) = tx.query_row(
        "SELECT t.retention_max_examples, t.retention_max_age_ms, h.version
         FROM tasks t LEFT JOIN heads h ON h.id = t.active_head WHERE t.id = ?1",
        [id.0],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    Ok(TaskInfo {
        name: name.to_string(),
        examples: count("SELECT count(*) FROM examples WHERE task_id = ?1")?,
        labels: count("SELECT count(DISTINCT label) FROM examples WHERE task_id = ?1")?,
        documents: count("SELECT count(*) FROM documents WHERE task_id = ?1")?,
        feedback: count("SELECT count(*) FROM feedback WHERE task_id = ?1")?,
        retention: Retention {
            max_examples: max_examples.map(|n| n as u64),
            max_age: max_age_ms.map(|ms| Duration::from_millis(ms as u64)),
        },
        active_head_version: active.map(|v| v as u32),
        trunk_states: count(&format!("SELECT count(*) FROM trunk_states WHERE {OF_TASK_EXAMPLES}"))?,
        trunk_state_bytes: count(&format!(
            "SELECT coalesce(sum(length(states)), 0) FROM trunk_states WHERE {OF_TASK_EXAMPLES}"
        ))?,
    })
}

const OF_TASK_EXAMPLES: &str = "text_hash IN (SELECT text_hash FROM examples WHERE task_id = ?1)";

pub(crate) fn task_id(tx: &Connection, name: &str) -> Result<TaskId> {
    tx.query_row("SELECT id FROM tasks WHERE name = ?1", [name], |row| row.get(0))
        .optional()?
        .map(TaskId)
        .ok_or_else(|| Error::UnknownTask(name.to_string()))
}

/// Opens one connection with the store's settings and checks it can read.
fn connect(path: &Path, options: &StoreOptions, create: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let connection = Connection::open_with_flags(path, flags).map_err(|e| match Error::from(e) {
        Error::Storage(reason) | Error::ReadOnly(reason) => {
            Error::Storage(format!("cannot open {}: {reason}", path.display()))
        }
        other => other,
    })?;
    apply_key(&connection, options.encryption_key.as_ref())?;
    // The first read decrypts and parses page 1: a wrong key, a missing key
    // or a file that is not SQLite all fail here, before anything is written.
    let readable = connection.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get::<_, i64>(0));
    if let Err(error) = readable {
        return Err(match (Error::from(error), options.encryption_key.is_some()) {
            (Error::DatabaseUnreadable(_), true) => {
                Error::EncryptionKey("wrong key, or the file is not encrypted".into())
            }
            (Error::DatabaseUnreadable(_), false) if looks_encrypted(path) => {
                Error::EncryptionKey("the file looks encrypted (no SQLite header): open it with its key".into())
            }
            (other, _) => other,
        });
    }
    connection.busy_timeout(options.busy_timeout)?;
    connection.pragma_update(None, "foreign_keys", true)?;
    // Deleted rows are overwritten with zeros, not just unlinked.
    connection.pragma_update(None, "secure_delete", true)?;
    // In WAL mode, NORMAL survives any app crash; a power cut may lose the
    // last commits but never consistency.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    // Indexes keyed by text hashes are written in random order: with
    // SQLite's default 2 MB cache a large import rereads and rewrites the
    // same pages over and over.
    connection.pragma_update(None, "cache_size", PAGE_CACHE_KIB)?;
    Ok(connection)
}

/// An encrypted file starts with a random salt instead of SQLite's header,
/// and is whole pages long; a text file or a damaged database is not.
fn looks_encrypted(path: &Path) -> bool {
    const HEADER: &[u8; 16] = b"SQLite format 3\0";
    let mut start = [0u8; 16];
    let read = std::fs::File::open(path).and_then(|mut file| {
        std::io::Read::read_exact(&mut file, &mut start)?;
        file.metadata()
    });
    read.is_ok_and(|meta| meta.len().is_multiple_of(512) && &start != HEADER)
}

#[cfg(feature = "encryption")]
fn apply_key(connection: &Connection, key: Option<&EncryptionKey>) -> Result<()> {
    if let Some(key) = key {
        // Failures reach the app as typed errors; SQLCipher's own log would
        // only repeat them on stderr or logcat.
        connection.execute_batch("PRAGMA cipher_log_level = NONE;")?;
        // SQLite frees its parsed copy of the key statement like any other
        // memory; with this, SQLCipher wipes all freed memory, so no key
        // outlives the store (tests/keys.rs), at a cost in write speed
        // (`attune-bench store` measures it).
        connection.execute_batch("PRAGMA cipher_memory_security = ON;")?;
        // The key is already quoted: a PRAGMA takes no bound parameters.
        let mut statement = Zeroizing::new(String::with_capacity(key.0.len() + 16));
        statement.push_str("PRAGMA key = ");
        statement.push_str(&key.0);
        statement.push(';');
        connection.execute_batch(&statement)?;
    }
    Ok(())
}

#[cfg(not(feature = "encryption"))]
fn apply_key(_connection: &Connection, key: Option<&EncryptionKey>) -> Result<()> {
    match key {
        Some(_) => {
            Err(Error::EncryptionKey("this build has no encryption support (cargo feature `encryption`)".into()))
        }
        None => Ok(()),
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Texts are found by hash: for the feature cache, duplicates and forgetting.
pub(crate) fn text_hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(Error::InvalidInput("a task name must be 1 to 200 bytes, not blank".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_a_typed_error_and_loses_nothing() {
        let path = crate::model::tests::tempdir("disk-full").join("user.db");
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        let task = store.ensure_task("t").unwrap();
        let first: Vec<_> = (0..10).map(|i| NewExample::new(format!("kept {i}"), "a")).collect();
        store.add_examples(task, &first).unwrap();
        {
            // SQLite's own size cap behaves exactly like a full device.
            let writer = store.writer.lock().unwrap();
            let pages: i64 = writer.query_row("PRAGMA page_count", [], |row| row.get(0)).unwrap();
            writer.pragma_update(None, "max_page_count", pages + 2).unwrap();
        }
        let big: Vec<_> = (0..5_000).map(|i| NewExample::new(format!("does not fit {i}"), "a")).collect();
        assert!(matches!(store.add_examples(task, &big), Err(Error::DiskFull)));
        assert_eq!(store.examples(task).unwrap().len(), 10);
        store.integrity_check().unwrap();
    }
}
