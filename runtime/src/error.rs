//! The runtime's error type. Messages name files and limits, never user text.

use std::path::PathBuf;

/// Everything that can go wrong in the runtime, by cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model manifest or catalog is missing, malformed or inconsistent.
    #[error("model manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    /// The ONNX file could not be parsed or prepared for inference.
    #[error("model {path} could not be loaded: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    /// The model, its tokenizer and its manifest do not fit together.
    #[error("model does not match its manifest: {0}")]
    ModelMismatch(String),
    /// The tokenizer file could not be loaded or applied.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The backbone's top layers cannot be adapted (an int8-compiled graph,
    /// a layer shape Attune does not recognise, an engine without it).
    #[error("the backbone cannot be adapted: {0}")]
    CannotAdapt(String),
    /// An inference backend failed while running a batch.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The requested backend is not compiled in or its library cannot be found.
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable { backend: String, reason: String },
    /// The caller passed something the runtime cannot accept.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The caller cancelled the operation.
    #[error("cancelled")]
    Cancelled,
    /// The database file was written by a newer Attune; it is left untouched.
    #[error("the database has schema version {found}; this Attune reads up to {supported}")]
    DatabaseTooNew { found: i64, supported: i64 },
    /// The file is not an Attune database, is damaged, or the key is wrong.
    #[error("not a readable database (damaged, not SQLite, or a wrong encryption key): {0}")]
    DatabaseUnreadable(String),
    /// An encryption key was needed, given to an unencrypted file, or wrong.
    #[error("encryption key: {0}")]
    EncryptionKey(String),
    /// The device has no space left for the write; nothing was changed.
    #[error("the disk is full; nothing was written")]
    DiskFull,
    /// The database cannot be written (read-only file or location).
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    /// Another storage failure.
    #[error("storage: {0}")]
    Storage(String),
    /// A stored head cannot be decoded.
    #[error("head checkpoint: {0}")]
    InvalidHead(String),
    /// A head was trained on another backbone's features.
    #[error("the head was trained for model {found}, this model is {expected}")]
    HeadModelMismatch { expected: String, found: String },
    /// The time budget ran out before training produced a head.
    #[error("time budget exceeded: {0}")]
    TimeBudgetExceeded(String),
    /// A private run or update would spend more than the task's (ε, δ) budget.
    #[error("privacy budget exceeded: {0}")]
    PrivacyBudgetExceeded(String),
    /// The task has neither a head, nor examples, nor label descriptions.
    #[error("task {0:?} cannot predict yet: add examples or describe its labels")]
    NotTrained(String),
    /// No task of that name exists.
    #[error("unknown task {0:?}")]
    UnknownTask(String),
    /// An import stopped partway: the first `committed` rows are stored
    /// (whole batches), the rest are not. Running the same import again
    /// resumes: rows already stored are skipped as duplicates.
    #[error(
        "import stopped after {committed} rows were committed: {cause}; run it again to resume (rows already stored are skipped)"
    )]
    ImportInterrupted { committed: u64, cause: Box<Error> },
}

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn manifest(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Manifest { path: path.into(), reason: reason.into() }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        let code = match &error {
            rusqlite::Error::SqliteFailure(failure, _) => Some(failure.code),
            _ => None,
        };
        match code {
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
                Error::DatabaseUnreadable(error.to_string())
            }
            Some(ErrorCode::DiskFull) => Error::DiskFull,
            Some(ErrorCode::ReadOnly) | Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => {
                Error::ReadOnly(error.to_string())
            }
            _ => Error::Storage(error.to_string()),
        }
    }
}
