//! The one error type apps see, converted from the runtime's error here and
//! nowhere else. Messages come from the runtime, which never puts user text
//! in them.

/// What went wrong, by what an app can do about it.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum AttuneError {
    /// The app passed something Attune cannot accept (empty or huge text,
    /// NaN, an unknown label or head version, a bad file).
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    /// The model directory is missing, damaged, or its parts do not fit together.
    #[error("model: {reason}")]
    Model { reason: String },
    /// The requested inference backend is not available in this build or on this device.
    #[error("backend unavailable: {reason}")]
    BackendUnavailable { reason: String },
    /// The database could not be read or written; nothing stored was lost.
    #[error("storage: {reason}")]
    Storage { reason: String },
    /// The database file (or a head stored in it) is damaged or is not an
    /// Attune database: the app may offer to reset it. It was left untouched.
    #[error("corrupt database: {reason}")]
    Corrupt { reason: String },
    /// An import stopped partway: its first `committed` rows are stored, the
    /// rest are not; importing the same file again resumes (stored rows are
    /// skipped as duplicates).
    #[error("import interrupted after {committed} rows: {reason}")]
    ImportInterrupted { committed: u64, reason: String },
    /// The database was written by a newer Attune; it was left untouched.
    #[error("database too new: {reason}")]
    DatabaseTooNew { reason: String },
    /// The device has no space left; nothing was written.
    #[error("disk full: {reason}")]
    DiskFull { reason: String },
    /// A key is needed, is wrong, or was given for an unencrypted database.
    #[error("encryption key: {reason}")]
    EncryptionKey { reason: String },
    /// The task has no head, examples or label descriptions yet.
    #[error("not trained: {reason}")]
    NotTrained { reason: String },
    /// No task of that name exists.
    #[error("unknown task: {reason}")]
    UnknownTask { reason: String },
    /// The training's time budget ran out before it produced a head.
    #[error("time budget exceeded: {reason}")]
    TimeBudgetExceeded { reason: String },
    /// A private run or update would spend more than the task's privacy budget.
    #[error("privacy budget exceeded: {reason}")]
    PrivacyBudgetExceeded { reason: String },
    /// The personalizer was closed (`close()`; `shutdown()` in Kotlin) before
    /// or during the call.
    #[error("closed: {reason}")]
    Closed { reason: String },
    /// The device could not start the work (no thread available); retry later.
    #[error("busy: {reason}")]
    Busy { reason: String },
    /// The call was cancelled (`interrupt()` or a `CancelToken`).
    /// A cancelled coroutine or task sees its runtime's own cancellation
    /// instead.
    #[error("cancelled: {reason}")]
    Cancelled { reason: String },
    /// The app's progress listener threw; the call was stopped.
    #[error("progress listener failed: {reason}")]
    ListenerFailed { reason: String },
}

impl From<attune::Error> for AttuneError {
    fn from(error: attune::Error) -> Self {
        use attune::Error as E;
        let reason = error.to_string();
        match error {
            E::InvalidInput(_) => Self::InvalidInput { reason },
            E::Manifest { .. }
            | E::ModelLoad { .. }
            | E::ModelMismatch(_)
            | E::Tokenizer(_)
            | E::CannotAdapt(_)
            | E::Inference(_)
            | E::HeadModelMismatch { .. } => Self::Model { reason },
            E::BackendUnavailable { .. } => Self::BackendUnavailable { reason },
            E::DatabaseTooNew { .. } => Self::DatabaseTooNew { reason },
            E::DiskFull => Self::DiskFull { reason },
            E::EncryptionKey(_) => Self::EncryptionKey { reason },
            E::NotTrained(_) => Self::NotTrained { reason },
            E::UnknownTask(_) => Self::UnknownTask { reason },
            E::TimeBudgetExceeded(_) => Self::TimeBudgetExceeded { reason },
            E::PrivacyBudgetExceeded(_) => Self::PrivacyBudgetExceeded { reason },
            E::Cancelled => Self::Cancelled { reason },
            E::DatabaseUnreadable(_) | E::InvalidHead(_) => Self::Corrupt { reason },
            E::ImportInterrupted { committed, .. } => Self::ImportInterrupted { committed, reason },
            // Io, Storage, ReadOnly and any cause added later: the app's
            // answer to all of them is the same.
            _ => Self::Storage { reason },
        }
    }
}

/// A foreign listener threw something other than an `AttuneError`.
impl From<uniffi::UnexpectedUniFFICallbackError> for AttuneError {
    fn from(error: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::ListenerFailed { reason: error.reason }
    }
}
