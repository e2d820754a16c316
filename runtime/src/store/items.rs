//! Documents for search and recommendation, and the user's feedback on them.

use rusqlite::OptionalExtension;

use super::examples::MAX_TEXT_BYTES;
use super::{Store, TaskId, now_ms, rights, text_hash};
use crate::error::{Error, Result};

/// A document to add or replace, under the app's own key.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDocument {
    pub key: String,
    pub text: String,
    /// Optional JSON object the app wants back with results.
    pub metadata: Option<String>,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: i64,
    pub key: String,
    pub text: String,
    pub metadata: Option<String>,
    pub created_at: i64,
}

/// What the user did with a result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    Impression,
    Click,
    Skip,
    /// Time spent on the result, in seconds.
    Dwell(f64),
    /// An explicit rating, e.g. 1 to 5.
    Rating(f64),
}

impl Signal {
    fn parts(self) -> (&'static str, f64) {
        match self {
            Signal::Impression => ("impression", 0.0),
            Signal::Click => ("click", 1.0),
            Signal::Skip => ("skip", -1.0),
            Signal::Dwell(seconds) => ("dwell", seconds),
            Signal::Rating(stars) => ("rating", stars),
        }
    }

    fn from_parts(name: &str, value: f64) -> Option<Self> {
        Some(match name {
            "impression" => Signal::Impression,
            "click" => Signal::Click,
            "skip" => Signal::Skip,
            "dwell" => Signal::Dwell(value),
            "rating" => Signal::Rating(value),
            _ => return None,
        })
    }
}

/// Feedback to record. `query` is `None` for recommendations.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFeedback {
    pub query: Option<String>,
    pub document_key: String,
    pub signal: Signal,
    pub created_at: Option<i64>,
}

/// A stored feedback event.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEvent {
    pub id: i64,
    pub query: Option<String>,
    pub document_key: String,
    pub signal: Signal,
    pub created_at: i64,
}

impl Store {
    /// Adds documents, replacing any with the same key. Returns how many changed.
    pub fn upsert_documents(&self, task: TaskId, documents: &[NewDocument]) -> Result<u64> {
        for document in documents {
            if document.key.is_empty() || document.text.trim().is_empty() || document.text.len() > MAX_TEXT_BYTES {
                return Err(Error::InvalidInput("a document needs a key and a text of at most 1 MiB".into()));
            }
            if let Some(metadata) = &document.metadata {
                let value: serde_json::Value = serde_json::from_str(metadata)
                    .map_err(|e| Error::InvalidInput(format!("document metadata is not JSON: {e}")))?;
                if !value.is_object() {
                    return Err(Error::InvalidInput("document metadata must be a JSON object".into()));
                }
            }
        }
        self.write(|tx| {
            let mut replaced_hashes = Vec::new();
            let mut statement = tx.prepare_cached(
                "INSERT INTO documents (task_id, key, text, text_hash, metadata, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (task_id, key) DO UPDATE SET text = excluded.text, text_hash = excluded.text_hash,
                     metadata = excluded.metadata",
            )?;
            let mut previous = tx.prepare_cached("SELECT text_hash FROM documents WHERE task_id = ?1 AND key = ?2")?;
            let mut changed = 0;
            for document in documents {
                let old: Option<Vec<u8>> =
                    previous.query_row((task.0, &document.key), |row| row.get(0)).optional()?;
                let hash = text_hash(&document.text);
                replaced_hashes.extend(old.filter(|h| h[..] != hash[..]));
                changed += statement.execute((
                    task.0,
                    &document.key,
                    &document.text,
                    &hash[..],
                    &document.metadata,
                    now_ms(),
                ))? as u64;
            }
            // A replaced text's cached vector is removed with it.
            rights::drop_unreferenced_features(tx, &replaced_hashes)?;
            Ok(changed)
        })
    }

    /// Every document of the task, in insertion order.
    pub fn documents(&self, task: TaskId) -> Result<Vec<Document>> {
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT id, key, text, metadata, created_at FROM documents WHERE task_id = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map([task.0], |row| {
                Ok(Document {
                    id: row.get(0)?,
                    key: row.get(1)?,
                    text: row.get(2)?,
                    metadata: row.get(3)?,
                    created_at: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Records what the user did with a document. Unknown keys are refused.
    pub fn record_feedback(&self, task: TaskId, feedback: &NewFeedback) -> Result<i64> {
        let (signal, value) = feedback.signal.parts();
        if !value.is_finite() {
            return Err(Error::InvalidInput("a feedback value is NaN or infinite".into()));
        }
        if feedback.query.as_ref().is_some_and(|q| q.len() > MAX_TEXT_BYTES) {
            return Err(Error::InvalidInput("a query is over 1 MiB".into()));
        }
        self.write(|tx| {
            let document: Option<i64> = tx
                .query_row(
                    "SELECT id FROM documents WHERE task_id = ?1 AND key = ?2",
                    (task.0, &feedback.document_key),
                    |row| row.get(0),
                )
                .optional()?;
            let document = document.ok_or_else(|| Error::InvalidInput("feedback names an unknown document".into()))?;
            let query_hash = feedback.query.as_deref().map(text_hash);
            tx.execute(
                "INSERT INTO feedback (task_id, query, query_hash, document_id, signal, value, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    task.0,
                    feedback.query,
                    query_hash.as_ref().map(|h| &h[..]),
                    document,
                    signal,
                    value,
                    feedback.created_at.unwrap_or_else(now_ms)
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Every feedback event of the task, oldest first.
    pub fn feedback(&self, task: TaskId) -> Result<Vec<FeedbackEvent>> {
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT f.id, f.query, d.key, f.signal, f.value, f.created_at
                 FROM feedback f JOIN documents d ON d.id = f.document_id WHERE f.task_id = ?1 ORDER BY f.id",
            )?;
            let rows = statement.query_map([task.0], |row| {
                let name: String = row.get(3)?;
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, name, row.get::<_, f64>(4)?, row.get(5)?))
            })?;
            rows.map(|row| {
                let (id, query, document_key, name, value, created_at) = row?;
                let signal = Signal::from_parts(&name, value)
                    .ok_or_else(|| Error::DatabaseUnreadable(format!("unknown feedback signal {name:?}")))?;
                Ok(FeedbackEvent { id, query, document_key, signal, created_at })
            })
            .collect()
        })
    }
}
