//! Labelled examples, one by one or streamed in bulk, and label descriptions.

use rusqlite::Transaction;

use super::{Store, TaskId, now_ms, rights, text_hash};
use crate::error::{Error, Result};

/// Longest text stored; far beyond any encoder's window.
pub(crate) const MAX_TEXT_BYTES: usize = 1 << 20;

/// An example to add. `created_at` (ms since the epoch) defaults to now.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExample {
    pub text: String,
    pub label: String,
    pub weight: f64,
    pub source: String,
    pub created_at: Option<i64>,
}

impl NewExample {
    pub fn new(text: impl Into<String>, label: impl Into<String>) -> Self {
        Self { text: text.into(), label: label.into(), weight: 1.0, source: "user".into(), created_at: None }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.text.trim().is_empty() {
            return Err(Error::InvalidInput("an example's text is empty".into()));
        }
        if self.text.len() > MAX_TEXT_BYTES {
            return Err(Error::InvalidInput(format!("an example's text is over {MAX_TEXT_BYTES} bytes")));
        }
        if self.label.trim().is_empty() || self.label.len() > 200 {
            return Err(Error::InvalidInput("a label must be 1 to 200 bytes, not blank".into()));
        }
        if !self.weight.is_finite() || self.weight <= 0.0 {
            return Err(Error::InvalidInput(format!("weight {} is not a positive number", self.weight)));
        }
        Ok(())
    }
}

/// A stored example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: i64,
    pub text: String,
    pub label: String,
    pub weight: f64,
    pub source: String,
    pub created_at: i64,
}

/// How many examples a label has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelCount {
    pub label: String,
    pub examples: u64,
}

/// What an add or import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddOutcome {
    pub inserted: u64,
    /// Same text and label as a stored example: kept once.
    pub duplicates: u64,
    /// Removed by the task's retention limits.
    pub evicted: u64,
}

impl Store {
    /// Adds examples in one transaction: all are stored, or none (the first
    /// invalid one is reported).
    pub fn add_examples(&self, task: TaskId, examples: &[NewExample]) -> Result<AddOutcome> {
        examples.iter().try_for_each(NewExample::validate)?;
        self.write(|tx| {
            let mut outcome = insert(tx, task, examples)?;
            outcome.evicted = rights::apply_retention(tx, task)?;
            Ok(outcome)
        })
    }

    /// Streams `rows` into the task in transactions of `batch_size`: memory
    /// stays flat, and each committed batch survives a crash whole. A bad row
    /// or a failed write stops the import; earlier batches stay committed,
    /// and once any has been the error is `Error::ImportInterrupted` with
    /// their row count. `on_batch` hears the running total after each commit.
    pub fn import_examples<I>(
        &self,
        task: TaskId,
        rows: I,
        batch_size: usize,
        on_batch: &mut dyn FnMut(&AddOutcome),
    ) -> Result<AddOutcome>
    where
        I: IntoIterator<Item = Result<NewExample>>,
    {
        let mut total = AddOutcome::default();
        let mut batch = Vec::with_capacity(batch_size.max(1));
        let mut rows = rows.into_iter();
        let interrupted = |total: &AddOutcome, cause: Error| match total.inserted + total.duplicates {
            0 => cause,
            committed => Error::ImportInterrupted { committed, cause: Box::new(cause) },
        };
        loop {
            batch.clear();
            for row in rows.by_ref().take(batch_size.max(1)) {
                let row = row.and_then(|row| row.validate().map(|()| row)).map_err(|e| interrupted(&total, e))?;
                batch.push(row);
            }
            if batch.is_empty() {
                return Ok(total);
            }
            let outcome = self
                .write(|tx| {
                    let mut outcome = insert(tx, task, &batch)?;
                    outcome.evicted = rights::apply_retention(tx, task)?;
                    Ok(outcome)
                })
                .map_err(|e| interrupted(&total, e))?;
            total.inserted += outcome.inserted;
            total.duplicates += outcome.duplicates;
            total.evicted += outcome.evicted;
            on_batch(&total);
        }
    }

    /// Every example of the task, oldest first.
    pub fn examples(&self, task: TaskId) -> Result<Vec<Example>> {
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT id, text, label, weight, source, created_at FROM examples WHERE task_id = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map([task.0], |row| {
                Ok(Example {
                    id: row.get(0)?,
                    text: row.get(1)?,
                    label: row.get(2)?,
                    weight: row.get(3)?,
                    source: row.get(4)?,
                    created_at: row.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Labels with their example counts, most frequent first.
    pub fn label_counts(&self, task: TaskId) -> Result<Vec<LabelCount>> {
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT label, count(*) FROM examples WHERE task_id = ?1 GROUP BY label ORDER BY count(*) DESC, label",
            )?;
            let rows = statement.query_map([task.0], |row| {
                Ok(LabelCount { label: row.get(0)?, examples: row.get::<_, i64>(1)? as u64 })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Describes a label in words, for zero-shot prediction before examples exist.
    pub fn set_label_description(&self, task: TaskId, label: &str, description: &str) -> Result<()> {
        if label.trim().is_empty() || description.trim().is_empty() {
            return Err(Error::InvalidInput("a label and its description must not be blank".into()));
        }
        self.write(|tx| {
            tx.execute(
                "INSERT INTO label_descriptions (task_id, label, description) VALUES (?1, ?2, ?3)
                 ON CONFLICT (task_id, label) DO UPDATE SET description = excluded.description",
                (task.0, label, description),
            )?;
            Ok(())
        })
    }

    /// `(label, description)` pairs of the task.
    pub fn label_descriptions(&self, task: TaskId) -> Result<Vec<(String, String)>> {
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT label, description FROM label_descriptions WHERE task_id = ?1 ORDER BY label",
            )?;
            let rows = statement.query_map([task.0], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

fn insert(tx: &Transaction<'_>, task: TaskId, examples: &[NewExample]) -> Result<AddOutcome> {
    let mut statement = tx.prepare_cached(
        "INSERT INTO examples (task_id, text, text_hash, label, weight, source, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (text_hash, task_id, label) DO NOTHING",
    )?;
    let now = now_ms();
    let mut outcome = AddOutcome::default();
    for example in examples {
        let hash = text_hash(&example.text);
        let created = example.created_at.unwrap_or(now);
        let changed = statement.execute((
            task.0,
            &example.text,
            &hash[..],
            &example.label,
            example.weight,
            &example.source,
            created,
        ))?;
        if changed == 1 {
            outcome.inserted += 1;
        } else {
            outcome.duplicates += 1;
        }
    }
    Ok(outcome)
}
