//! Trained heads: versioned checkpoints per task, one of them active.
//! Saving, promoting and rolling back are each one transaction.
//!
//! A task keeps its newest versions, its active one and its latest shared
//! one; older versions are deleted when a new one is saved. An adapted head
//! carries its layers (7.6 MB for the default model's top two), so a task
//! retrained every day would otherwise grow the file without bound.

use rusqlite::{OptionalExtension, Row, Transaction};

use super::{Store, TaskId, now_ms};
use crate::error::{Error, Result};

/// A head to store, as the trainer produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewHead {
    pub kind: String,
    pub format_version: u32,
    /// Fingerprint of the backbone whose features it was trained on.
    pub fingerprint: String,
    pub labels: Vec<String>,
    pub weights: Vec<u8>,
    /// Training report and metrics, as JSON text.
    pub report: String,
    pub metrics: String,
    /// Highest example id the training saw; forgetting any example at or
    /// below it makes the head stale.
    pub trained_through_example: i64,
    /// For a head trained with differential privacy: its run, written to the
    /// task's ledger in the same transaction as the head, so no private
    /// head exists whose ε is not counted.
    pub privacy: Option<HeadPrivacy>,
    /// Adopted from federated rounds rather than trained on the device.
    pub shared: bool,
}

/// What a private head records: the run it cost, the (ε, δ) of the task's
/// ledger with it, and the task's policy (from then on the task is private).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadPrivacy {
    pub run: LedgerEntry,
    pub epsilon: f64,
    pub delta: f64,
    /// The task's privacy policy as JSON (see `Store::privacy_policy`).
    pub policy: String,
}

/// Versions kept per task besides the active and the latest shared one.
pub const KEPT_HEAD_VERSIONS: u32 = 5;

/// A stored head with everything needed to load it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHead {
    pub info: HeadInfo,
    pub format_version: u32,
    pub labels: Vec<String>,
    pub weights: Vec<u8>,
    pub report: String,
}

/// A head's version history entry.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadInfo {
    pub version: u32,
    pub kind: String,
    pub fingerprint: String,
    pub metrics: String,
    /// Trained on data that has since been forgotten: its weights are erased
    /// and it can no longer be activated.
    pub stale: bool,
    pub active: bool,
    pub created_at: i64,
    /// Highest example id it was trained on: examples above it are new to it.
    pub trained_through_example: i64,
    /// For a head trained with differential privacy, the (ε, δ) of its
    /// task's ledger when it was trained; `None` for a non-private head.
    pub privacy: Option<(f64, f64)>,
    /// Adopted from federated rounds rather than trained on the device.
    pub shared: bool,
    /// Size of its stored weights.
    pub weight_bytes: u64,
}

/// Whether a saved head answers predictions from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveAs {
    /// The task's active head, in the same transaction.
    Active,
    /// Kept as a candidate (or for a later switch); the active head stays.
    Inactive,
}

const COLUMNS: &str = "h.version, h.kind, h.fingerprint, h.metrics, h.stale, h.id = t.active_head, h.created_at,
     h.trained_through_example, h.private_epsilon, h.private_delta, h.origin = 'shared',
     h.format_version, h.label_map, h.weights, h.report, length(h.weights)";

/// A head row as read, before its label map is parsed.
struct HeadRow {
    info: HeadInfo,
    format_version: u32,
    label_map: String,
    weights: Vec<u8>,
    report: String,
}

fn stored_head(row: &Row<'_>) -> rusqlite::Result<HeadRow> {
    Ok(HeadRow {
        info: HeadInfo {
            version: row.get(0)?,
            kind: row.get(1)?,
            fingerprint: row.get(2)?,
            metrics: row.get(3)?,
            stale: row.get(4)?,
            active: row.get::<_, Option<bool>>(5)?.unwrap_or(false),
            created_at: row.get(6)?,
            trained_through_example: row.get(7)?,
            privacy: match (row.get::<_, Option<f64>>(8)?, row.get::<_, Option<f64>>(9)?) {
                (Some(epsilon), Some(delta)) => Some((epsilon, delta)),
                _ => None,
            },
            shared: row.get(10)?,
            weight_bytes: row.get::<_, Option<i64>>(15)?.unwrap_or(0) as u64,
        },
        format_version: row.get(11)?,
        label_map: row.get(12)?,
        weights: row.get(13)?,
        report: row.get(14)?,
    })
}

impl Store {
    /// Stores a new head version, active or not as `save_as` says, in one
    /// transaction that also deletes the versions no longer kept (see the
    /// module's note). Returns its version.
    pub fn save_head(&self, task: TaskId, head: &NewHead, save_as: SaveAs) -> Result<u32> {
        if head.labels.is_empty() || head.weights.is_empty() {
            return Err(Error::InvalidInput("a head needs labels and weights".into()));
        }
        for json in [&head.report, &head.metrics] {
            serde_json::from_str::<serde_json::Value>(json)
                .map_err(|e| Error::InvalidInput(format!("head report or metrics is not JSON: {e}")))?;
        }
        let labels = serde_json::to_string(&head.labels).map_err(|e| Error::InvalidInput(e.to_string()))?;
        self.write(|tx| {
            let version: u32 =
                tx.query_row("SELECT coalesce(max(version), 0) + 1 FROM heads WHERE task_id = ?1", [task.0], |row| {
                    row.get(0)
                })?;
            tx.execute(
                "INSERT INTO heads (task_id, version, kind, format_version, fingerprint, label_map, weights,
                                    report, metrics, trained_through_example, created_at,
                                    private_epsilon, private_delta, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                rusqlite::params![
                    task.0,
                    version,
                    head.kind,
                    head.format_version,
                    head.fingerprint,
                    labels,
                    head.weights,
                    head.report,
                    head.metrics,
                    head.trained_through_example,
                    now_ms(),
                    head.privacy.as_ref().map(|p| p.epsilon),
                    head.privacy.as_ref().map(|p| p.delta),
                    if head.shared { "shared" } else { "local" },
                ],
            )?;
            if let Some(privacy) = &head.privacy {
                insert_ledger_entry(tx, task, privacy.run)?;
                tx.execute("UPDATE tasks SET privacy = ?1 WHERE id = ?2", (&privacy.policy, task.0))?;
            }
            if save_as == SaveAs::Active {
                make_active(tx, task, version)?;
            }
            delete_old_versions(tx, task, version)?;
            Ok(version)
        })
    }

    /// Makes an earlier (or later) version active: promotion and rollback.
    pub fn activate_head(&self, task: TaskId, version: u32) -> Result<()> {
        self.write(|tx| make_active(tx, task, version))
    }

    /// Makes each task's given version active, all in one transaction: a
    /// model upgrade switches every task at once or none.
    pub fn activate_heads(&self, heads: &[(TaskId, u32)]) -> Result<()> {
        self.write(|tx| heads.iter().try_for_each(|&(task, version)| make_active(tx, task, version)))
    }

    /// The active head, if the task has one that is not stale.
    pub fn active_head(&self, task: TaskId) -> Result<Option<StoredHead>> {
        self.read(|tx| {
            let sql = format!(
                "SELECT {COLUMNS} FROM tasks t JOIN heads h ON h.id = t.active_head WHERE t.id = ?1 AND h.stale = 0"
            );
            let row = tx.query_row(&sql, [task.0], stored_head).optional()?;
            row.map(into_stored).transpose()
        })
    }

    /// The task's most recently adopted shared head that is not stale.
    pub fn latest_shared_head(&self, task: TaskId) -> Result<Option<StoredHead>> {
        self.read(|tx| {
            let sql = format!(
                "SELECT {COLUMNS} FROM heads h JOIN tasks t ON t.id = h.task_id
                 WHERE h.task_id = ?1 AND h.origin = 'shared' AND h.stale = 0 ORDER BY h.version DESC LIMIT 1"
            );
            let row = tx.query_row(&sql, [task.0], stored_head).optional()?;
            row.map(into_stored).transpose()
        })
    }

    /// One version of the task's heads.
    pub fn head(&self, task: TaskId, version: u32) -> Result<Option<StoredHead>> {
        self.read(|tx| {
            let sql = format!(
                "SELECT {COLUMNS} FROM heads h JOIN tasks t ON t.id = h.task_id WHERE h.task_id = ?1 AND h.version = ?2"
            );
            let row = tx.query_row(&sql, (task.0, version), stored_head).optional()?;
            row.map(into_stored).transpose()
        })
    }

    /// Every version of the task's heads, oldest first.
    pub fn heads(&self, task: TaskId) -> Result<Vec<HeadInfo>> {
        self.read(|tx| {
            let sql = format!(
                "SELECT {COLUMNS} FROM heads h JOIN tasks t ON t.id = h.task_id WHERE h.task_id = ?1 ORDER BY h.version"
            );
            let mut statement = tx.prepare(&sql)?;
            let rows = statement.query_map([task.0], stored_head)?;
            Ok(rows.map(|row| row.map(|r| r.info)).collect::<Result<_, _>>()?)
        })
    }
}

fn into_stored(row: HeadRow) -> Result<StoredHead> {
    let HeadRow { info, format_version, label_map, weights, report } = row;
    let labels = serde_json::from_str(&label_map)
        .map_err(|e| Error::DatabaseUnreadable(format!("head {} has a malformed label map: {e}", info.version)))?;
    Ok(StoredHead { info, format_version, labels, weights, report })
}

fn insert_ledger_entry(tx: &Transaction<'_>, task: TaskId, entry: LedgerEntry) -> Result<()> {
    tx.execute(
        "INSERT INTO privacy_ledger (task_id, sampling_rate, noise_multiplier, steps, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        (task.0, entry.sampling_rate, entry.noise_multiplier, entry.steps as i64, now_ms()),
    )?;
    Ok(())
}

/// Deletes the task's versions older than the newest `KEPT_HEAD_VERSIONS`
/// (up to `newest`) that are neither active nor its latest usable shared head.
fn delete_old_versions(tx: &Transaction<'_>, task: TaskId, newest: u32) -> Result<()> {
    tx.execute(
        "DELETE FROM heads WHERE task_id = ?1 AND version <= ?2
           AND id IS NOT (SELECT active_head FROM tasks WHERE id = ?1)
           AND id IS NOT (SELECT id FROM heads WHERE task_id = ?1 AND origin = 'shared' AND stale = 0
                          ORDER BY version DESC LIMIT 1)",
        (task.0, i64::from(newest) - i64::from(KEPT_HEAD_VERSIONS)),
    )?;
    Ok(())
}

fn make_active(tx: &Transaction<'_>, task: TaskId, version: u32) -> Result<()> {
    let head: Option<(i64, bool)> = tx
        .query_row("SELECT id, stale FROM heads WHERE task_id = ?1 AND version = ?2", (task.0, version), |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    match head {
        None => Err(Error::InvalidInput(format!("the task has no head version {version}"))),
        Some((_, true)) => Err(Error::InvalidInput(format!("head version {version} was trained on forgotten data"))),
        Some((id, false)) => {
            tx.execute("UPDATE tasks SET active_head = ?1 WHERE id = ?2", (id, task.0))?;
            Ok(())
        }
    }
}

/// One differentially private training run, as the ledger keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LedgerEntry {
    pub sampling_rate: f64,
    pub noise_multiplier: f64,
    pub steps: u64,
}

impl Store {
    /// The privacy policy (JSON) of a task trained with differential
    /// privacy; `None` for a public task.
    pub fn privacy_policy(&self, task: TaskId) -> Result<Option<String>> {
        self.read(|tx| Ok(tx.query_row("SELECT privacy FROM tasks WHERE id = ?1", [task.0], |row| row.get(0))?))
    }

    /// Charges a private release that is not a head (a federated update) to
    /// the task's ledger and, for a task not private yet, stores `policy`,
    /// in one transaction.
    pub fn record_private_release(&self, task: TaskId, entry: LedgerEntry, policy: &str) -> Result<()> {
        self.write(|tx| {
            insert_ledger_entry(tx, task, entry)?;
            tx.execute("UPDATE tasks SET privacy = coalesce(privacy, ?1) WHERE id = ?2", (policy, task.0))?;
            Ok(())
        })
    }

    /// Every private run of the task: the privacy it has spent composes over them.
    pub fn private_runs(&self, task: TaskId) -> Result<Vec<LedgerEntry>> {
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT sampling_rate, noise_multiplier, steps FROM privacy_ledger WHERE task_id = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map([task.0], |row| {
                Ok(LedgerEntry {
                    sampling_rate: row.get(0)?,
                    noise_multiplier: row.get(1)?,
                    steps: row.get::<_, i64>(2)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}
