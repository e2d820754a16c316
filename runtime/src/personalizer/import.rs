//! Importing a file of labelled texts so that stopping it costs nothing:
//! each segment is embedded first (cancellable, in memory) and only then
//! written, its rows before their vectors.

use std::path::Path;

use super::features::Features;
use crate::encoder::EncodeListener;
use crate::error::{Error, Result};
use crate::import::{Columns, ImportFormat, read_labelled_file};
use crate::store::{AddOutcome, NewExample, VectorEncoding};

/// Rows embedded before a write. A cancelled import keeps nothing of the
/// segment it was embedding; this bounds the vectors held in memory
/// (8,192 × 384 floats ≈ 12.6 MB for the default model).
const SEGMENT_ROWS: usize = 8_192;
/// Rows per committed transaction while writing a segment.
const WRITE_BATCH: usize = 1_000;

/// Reads a CSV or JSON Lines file of labelled texts (see
/// [`read_labelled_file`]) into `task` with their vectors; a file with
/// bad lines is refused whole. Progress counts embedded rows of the
/// whole file. Cancelled (or failing) before its first segment is
/// written, the database is as before the call; after that, the error
/// is [`Error::ImportInterrupted`] with the rows committed so far, and
/// importing the file again resumes (stored rows are duplicates).
/// Files of up to 8,192 rows are one segment. Blocking.
pub(super) fn import_file(
    features: Features<'_>,
    task: &str,
    path: &Path,
    format: Option<ImportFormat>,
    columns: &Columns,
    listener: &dyn EncodeListener,
) -> Result<AddOutcome> {
    let rows = read_labelled_file(path, format, columns)?;
    let mut total = AddOutcome::default();
    for (index, segment) in rows.chunks(SEGMENT_ROWS).enumerate() {
        let progress = Offset { inner: listener, before: index * SEGMENT_ROWS, total: rows.len() };
        let written = import_segment(features, task, segment, progress).map_err(|e| interrupted(&total, e))?;
        total.inserted += written.inserted;
        total.duplicates += written.duplicates;
        total.evicted += written.evicted;
    }
    Ok(total)
}

fn import_segment(
    features: Features<'_>,
    task: &str,
    rows: &[(String, String)],
    mut progress: Offset<'_>,
) -> Result<AddOutcome> {
    let store = features.store;
    let fingerprint = features.fingerprint();
    let texts: Vec<&str> = rows.iter().map(|(text, _)| text.as_str()).collect();
    let cached = store.cached_features(fingerprint, &texts)?;
    let mut missing: Vec<&str> = texts.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(t, _)| *t).collect();
    missing.sort_unstable();
    missing.dedup();
    // Texts already cached count as embedded.
    progress.before += rows.len() - missing.len();
    let vectors = match missing.is_empty() {
        true => None,
        false => Some(features.encoder.embed_with(&missing, &progress)?),
    };
    if progress.is_cancelled() {
        return Err(Error::Cancelled);
    }

    let id = store.ensure_task(task)?;
    let examples = rows.iter().map(|(text, label)| Ok(NewExample::new(text.as_str(), label.as_str())));
    let outcome = store.import_examples(id, examples, WRITE_BATCH, &mut |_| {})?;
    if let Some(vectors) = vectors {
        let entries: Vec<(&str, &[f32])> = missing.iter().copied().zip(vectors.rows()).collect();
        store.cache_features(fingerprint, &entries, VectorEncoding::F32).map_err(|cause| Error::ImportInterrupted {
            committed: outcome.inserted + outcome.duplicates,
            cause: Box::new(cause),
        })?;
    }
    Ok(outcome)
}

/// Adds the rows committed by earlier segments to an error.
fn interrupted(before: &AddOutcome, error: Error) -> Error {
    let earlier = before.inserted + before.duplicates;
    match error {
        _ if earlier == 0 => error,
        Error::ImportInterrupted { committed, cause } => {
            Error::ImportInterrupted { committed: earlier + committed, cause }
        }
        cause => Error::ImportInterrupted { committed: earlier, cause: Box::new(cause) },
    }
}

/// Progress of one segment, reported as progress through the whole file.
struct Offset<'a> {
    inner: &'a dyn EncodeListener,
    before: usize,
    total: usize,
}

impl EncodeListener for Offset<'_> {
    fn on_progress(&self, done: usize, _segment: usize) {
        self.inner.on_progress(self.before + done, self.total);
    }

    fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
}
