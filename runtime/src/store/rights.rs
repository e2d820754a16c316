//! The user's rights over their data, enforced by the store: forgetting
//! (with the vectors and heads derived from what is forgotten), retention
//! limits, compaction that leaves no trace in the files, and export.

use std::io::Write;
use std::time::Duration;

use rusqlite::Transaction;
use rusqlite::types::Value;

use super::{Store, TaskId, now_ms, task_id, text_hash};
use crate::error::{Error, Result};

/// What to forget.
#[derive(Debug, Clone, PartialEq)]
pub enum Forget {
    /// One example of the task, by id.
    Example(i64),
    /// Every example of the task with this label.
    Label(String),
    /// Every example, document and feedback query of the task with this text.
    Text(String),
    /// Every example, document and feedback event of the task created in
    /// `[from_ms, to_ms)` (milliseconds since the epoch).
    CreatedBetween { from_ms: i64, to_ms: i64 },
    /// The task and everything in it.
    Task,
    /// Every task and the whole feature cache.
    Everything,
}

/// What a forget removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForgetOutcome {
    pub examples: u64,
    pub documents: u64,
    pub feedback: u64,
    /// Cached vectors (and examples' trunk states) that no remaining row used.
    pub vectors: u64,
    /// Heads trained on forgotten data: erased, and deactivated if active.
    pub heads_invalidated: u64,
}

impl ForgetOutcome {
    fn add(&mut self, other: ForgetOutcome) {
        self.examples += other.examples;
        self.documents += other.documents;
        self.feedback += other.feedback;
        self.vectors += other.vectors;
        self.heads_invalidated += other.heads_invalidated;
    }
}

/// Per-task limits applied on every write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many examples; the oldest go first.
    pub max_examples: Option<u64>,
    /// Forget examples older than this.
    pub max_age: Option<Duration>,
}

/// Row selections, as SQL over the task's rows: (examples, documents, feedback).
struct Selection {
    examples: Option<(String, Vec<Value>)>,
    documents: Option<(String, Vec<Value>)>,
    feedback: Option<(String, Vec<Value>)>,
}

impl Store {
    /// Forgets data of `task` (ignored for `Forget::Everything`). The text,
    /// its cached vectors when nothing else uses them, and the weights of
    /// heads trained on it are removed in one transaction; call
    /// [`Store::compact`] afterwards to purge them from the file's free pages
    /// and the write-ahead log.
    pub fn forget(&self, task: Option<&str>, what: &Forget) -> Result<ForgetOutcome> {
        self.write(|tx| {
            if *what == Forget::Everything {
                let mut outcome = ForgetOutcome::default();
                let tasks: Vec<i64> =
                    tx.prepare("SELECT id FROM tasks")?.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
                for id in tasks {
                    outcome.add(forget_task(tx, TaskId(id))?);
                }
                outcome.vectors += tx.execute("DELETE FROM features", [])? as u64;
                outcome.vectors += tx.execute("DELETE FROM trunk_states", [])? as u64;
                return Ok(outcome);
            }
            let name = task.ok_or_else(|| Error::InvalidInput("forgetting needs a task".into()))?;
            let task = task_id(tx, name)?;
            if *what == Forget::Task {
                return forget_task(tx, task);
            }
            let mut outcome = forget_rows(tx, task, &selection(what))?;
            if let Forget::Text(text) = what {
                // Its vector may be cached without a row of its own.
                outcome.vectors += drop_unreferenced_features(tx, &[text_hash(text).to_vec()])?;
            }
            Ok(outcome)
        })
    }

    /// Sets the task's retention limits and applies them at once.
    pub fn set_retention(&self, task: TaskId, retention: Retention) -> Result<u64> {
        let to_i64 = |n: u64| i64::try_from(n).map_err(|_| Error::InvalidInput("retention limit too large".into()));
        let max_examples = retention.max_examples.map(to_i64).transpose()?;
        let max_age = retention.max_age.map(|d| to_i64(d.as_millis() as u64)).transpose()?;
        self.write(|tx| {
            tx.execute(
                "UPDATE tasks SET retention_max_examples = ?1, retention_max_age_ms = ?2 WHERE id = ?3",
                (max_examples, max_age, task.0),
            )?;
            apply_retention(tx, task)
        })
    }

    /// Checkpoints the write-ahead log into the database, rebuilds the file
    /// without free pages and truncates the log: afterwards nothing forgotten
    /// remains in the bytes of either file.
    pub fn compact(&self) -> Result<()> {
        let connection = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }

    /// Writes everything stored about the user as one JSON document: tasks
    /// with their settings, examples, label descriptions, documents, feedback
    /// and heads (weights in base64); the feature cache as counts, since it is
    /// derived from the texts.
    pub fn export_json(&self, out: &mut dyn Write) -> Result<()> {
        let io = |e: std::io::Error| Error::Storage(format!("writing the export: {e}"));
        let tasks = self.tasks()?;
        write!(out, "{{\"format\":1,\"exported_at_ms\":{},\"tasks\":[", now_ms()).map_err(io)?;
        for (index, info) in tasks.iter().enumerate() {
            let task = self.task_id(&info.name)?;
            let examples: Vec<_> = self
                .examples(task)?
                .into_iter()
                .map(|e| {
                    serde_json::json!({"id": e.id, "text": e.text, "label": e.label, "weight": e.weight,
                                       "source": e.source, "created_at_ms": e.created_at})
                })
                .collect();
            let documents: Vec<_> = self
                .documents(task)?
                .into_iter()
                .map(|d| {
                    let metadata = d.metadata.and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok());
                    serde_json::json!({"key": d.key, "text": d.text, "metadata": metadata, "created_at_ms": d.created_at})
                })
                .collect();
            let feedback: Vec<_> = self
                .feedback(task)?
                .into_iter()
                .map(|f| {
                    serde_json::json!({"query": f.query, "document": f.document_key,
                                       "signal": format!("{:?}", f.signal), "created_at_ms": f.created_at})
                })
                .collect();
            let mut heads = Vec::new();
            for info in self.heads(task)? {
                let stored = self.head(task, info.version)?;
                heads.push(serde_json::json!({
                    "version": info.version, "kind": info.kind, "fingerprint": info.fingerprint,
                    "active": info.active, "stale": info.stale, "created_at_ms": info.created_at,
                    "private": info.privacy.is_some(),
                    "epsilon": info.privacy.map(|p| p.0), "delta": info.privacy.map(|p| p.1),
                    "labels": stored.as_ref().map(|s| s.labels.clone()),
                    "metrics": serde_json::from_str::<serde_json::Value>(&info.metrics).ok(),
                    "weights_base64": stored.map(|s| base64(&s.weights)),
                }));
            }
            let descriptions: serde_json::Map<_, _> = self
                .label_descriptions(task)?
                .into_iter()
                .map(|(label, description)| (label, serde_json::Value::String(description)))
                .collect();
            let document = serde_json::json!({
                "name": info.name,
                "retention": {"max_examples": info.retention.max_examples,
                              "max_age_ms": info.retention.max_age.map(|d| d.as_millis() as u64)},
                "label_descriptions": descriptions,
                "examples": examples, "documents": documents, "feedback": feedback, "heads": heads,
            });
            if index > 0 {
                out.write_all(b",").map_err(io)?;
            }
            serde_json::to_writer(&mut *out, &document).map_err(|e| Error::Storage(e.to_string()))?;
        }
        let cache: serde_json::Map<_, _> = self
            .feature_fingerprints()?
            .into_iter()
            .map(|(fingerprint, count)| (fingerprint, serde_json::Value::from(count)))
            .collect();
        write!(out, "],\"feature_cache_vectors\":{}}}", serde_json::Value::Object(cache)).map_err(io)?;
        Ok(())
    }
}

fn selection(what: &Forget) -> Selection {
    let text = |column: &str, text: &str| (format!("{column} = ?"), vec![Value::Blob(text_hash(text).to_vec())]);
    match what {
        Forget::Example(id) => {
            Selection { examples: Some(("id = ?".into(), vec![Value::Integer(*id)])), documents: None, feedback: None }
        }
        Forget::Label(label) => Selection {
            examples: Some(("label = ?".into(), vec![Value::Text(label.clone())])),
            documents: None,
            feedback: None,
        },
        Forget::Text(t) => Selection {
            examples: Some(text("text_hash", t)),
            documents: Some(text("text_hash", t)),
            feedback: Some(text("query_hash", t)),
        },
        Forget::CreatedBetween { from_ms, to_ms } => {
            let range = || {
                (
                    "created_at >= ? AND created_at < ?".to_string(),
                    vec![Value::Integer(*from_ms), Value::Integer(*to_ms)],
                )
            };
            Selection { examples: Some(range()), documents: Some(range()), feedback: Some(range()) }
        }
        Forget::Task | Forget::Everything => unreachable!("handled by forget_task"),
    }
}

/// Deletes the selected rows of one task and everything derived from them.
fn forget_rows(tx: &Transaction<'_>, task: TaskId, selection: &Selection) -> Result<ForgetOutcome> {
    let mut outcome = ForgetOutcome::default();
    let mut hashes: Vec<Vec<u8>> = Vec::new();
    if let Some((filter, params)) = &selection.examples {
        let rows: Vec<(i64, Vec<u8>)> = select(tx, "id, text_hash", "examples", task, filter, params)?;
        if let Some(first) = rows.iter().map(|r| r.0).min() {
            outcome.heads_invalidated += invalidate_heads(tx, task, Trained::OnExamplesFrom(first))?;
        }
        outcome.examples = delete(tx, "examples", task, filter, params)?;
        hashes.extend(rows.into_iter().map(|r| r.1));
    }
    if let Some((filter, params)) = &selection.feedback {
        let rows: Vec<(i64, Option<Vec<u8>>)> = select(tx, "id, query_hash", "feedback", task, filter, params)?;
        outcome.feedback = delete(tx, "feedback", task, filter, params)?;
        hashes.extend(rows.into_iter().filter_map(|r| r.1));
    }
    if let Some((filter, params)) = &selection.documents {
        let rows: Vec<(i64, Vec<u8>)> = select(tx, "id, text_hash", "documents", task, filter, params)?;
        // Feedback on a forgotten document goes with it (foreign key
        // cascade), and so do the vectors of its queries.
        let mut statement = tx.prepare(&format!(
            "SELECT query_hash FROM feedback WHERE document_id IN (SELECT id FROM documents WHERE task_id = ? AND {filter})"
        ))?;
        let all = std::iter::once(Value::Integer(task.0)).chain(params.iter().cloned());
        let cascaded: Vec<Option<Vec<u8>>> =
            statement.query_map(rusqlite::params_from_iter(all), |row| row.get(0))?.collect::<Result<_, _>>()?;
        outcome.feedback += cascaded.len() as u64;
        hashes.extend(cascaded.into_iter().flatten());
        outcome.documents = delete(tx, "documents", task, filter, params)?;
        hashes.extend(rows.into_iter().map(|r| r.1));
    }
    if outcome.documents + outcome.feedback > 0 {
        // Rankers learn from documents and feedback as a whole.
        outcome.heads_invalidated += invalidate_heads(tx, task, Trained::OnFeedback)?;
    }
    outcome.vectors = drop_unreferenced_features(tx, &hashes)?;
    Ok(outcome)
}

fn forget_task(tx: &Transaction<'_>, task: TaskId) -> Result<ForgetOutcome> {
    let all = || Some(("1 = 1".to_string(), Vec::new()));
    let mut outcome = forget_rows(tx, task, &Selection { examples: all(), documents: all(), feedback: all() })?;
    outcome.heads_invalidated =
        tx.query_row("SELECT count(*) FROM heads WHERE task_id = ?1", [task.0], |row| row.get::<_, i64>(0))? as u64;
    tx.execute("DELETE FROM tasks WHERE id = ?1", [task.0])?;
    Ok(outcome)
}

fn select<T: rusqlite::types::FromSql, U: rusqlite::types::FromSql>(
    tx: &Transaction<'_>,
    columns: &str,
    table: &str,
    task: TaskId,
    filter: &str,
    params: &[Value],
) -> Result<Vec<(T, U)>> {
    let sql = format!("SELECT {columns} FROM {table} WHERE task_id = ? AND {filter}");
    let mut statement = tx.prepare(&sql)?;
    let all = std::iter::once(Value::Integer(task.0)).chain(params.iter().cloned());
    let rows = statement.query_map(rusqlite::params_from_iter(all), |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn delete(tx: &Transaction<'_>, table: &str, task: TaskId, filter: &str, params: &[Value]) -> Result<u64> {
    let sql = format!("DELETE FROM {table} WHERE task_id = ? AND {filter}");
    let all = std::iter::once(Value::Integer(task.0)).chain(params.iter().cloned());
    Ok(tx.execute(&sql, rusqlite::params_from_iter(all))? as u64)
}

/// Which heads learned from forgotten rows.
enum Trained {
    /// Classifiers whose training saw examples with this id or later ones.
    OnExamplesFrom(i64),
    /// Rankers, which learn from documents and feedback as a whole.
    OnFeedback,
}

/// Erases the weights of the task's heads trained on forgotten data, marks
/// them stale and deactivates the active one if it is among them.
fn invalidate_heads(tx: &Transaction<'_>, task: TaskId, trained: Trained) -> Result<u64> {
    let erase = "UPDATE heads SET stale = 1, weights = x'' WHERE task_id = ?1 AND stale = 0";
    let changed = match trained {
        Trained::OnExamplesFrom(first) => {
            tx.execute(&format!("{erase} AND trained_through_example >= ?2"), (task.0, first))?
        }
        Trained::OnFeedback => tx.execute(&format!("{erase} AND kind = 'ranker'"), [task.0])?,
    };
    tx.execute(
        "UPDATE tasks SET active_head = NULL WHERE id = ?1 AND active_head IN (SELECT id FROM heads WHERE stale = 1)",
        [task.0],
    )?;
    Ok(changed as u64)
}

/// Removes cached vectors of `hashes` that no example, document or feedback
/// query still uses, and cached trunk states that no example uses (only
/// examples have them); returns how many of both went.
pub(crate) fn drop_unreferenced_features(tx: &Transaction<'_>, hashes: &[Vec<u8>]) -> Result<u64> {
    let mut vectors = tx.prepare_cached(
        "DELETE FROM features WHERE text_hash = ?1
           AND NOT EXISTS (SELECT 1 FROM examples WHERE text_hash = ?1)
           AND NOT EXISTS (SELECT 1 FROM documents WHERE text_hash = ?1)
           AND NOT EXISTS (SELECT 1 FROM feedback WHERE query_hash = ?1)",
    )?;
    let mut states = tx.prepare_cached(
        "DELETE FROM trunk_states WHERE text_hash = ?1 AND NOT EXISTS (SELECT 1 FROM examples WHERE text_hash = ?1)",
    )?;
    let mut removed = 0;
    for hash in hashes {
        removed += vectors.execute([hash])? as u64 + states.execute([hash])? as u64;
    }
    Ok(removed)
}

/// Applies the task's retention limits; returns how many examples went.
pub(crate) fn apply_retention(tx: &Transaction<'_>, task: TaskId) -> Result<u64> {
    let (max_examples, max_age_ms): (Option<i64>, Option<i64>) = tx.query_row(
        "SELECT retention_max_examples, retention_max_age_ms FROM tasks WHERE id = ?1",
        [task.0],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let mut evicted = 0;
    if let Some(max_age) = max_age_ms {
        let cutoff = now_ms().saturating_sub(max_age);
        let selection = Selection {
            examples: Some(("created_at < ?".into(), vec![Value::Integer(cutoff)])),
            documents: None,
            feedback: None,
        };
        evicted += forget_rows(tx, task, &selection)?.examples;
    }
    if let Some(max) = max_examples {
        let count: i64 =
            tx.query_row("SELECT count(*) FROM examples WHERE task_id = ?1", [task.0], |row| row.get(0))?;
        if count > max {
            let filter = "id IN (SELECT id FROM examples WHERE task_id = ? ORDER BY created_at, id LIMIT ?)";
            let selection = Selection {
                examples: Some((filter.into(), vec![Value::Integer(task.0), Value::Integer(count - max)])),
                documents: None,
                feedback: None,
            };
            evicted += forget_rows(tx, task, &selection)?.examples;
        }
    }
    Ok(evicted)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
