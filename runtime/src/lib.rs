//! Attune: on-device personalization.
//!
//! A frozen ONNX sentence encoder turns text into features on the device; small
//! heads are trained on the device from the user's own data. Nothing here opens
//! a network connection: models and data arrive as files.

mod encoder;
mod error;
mod evaluation;
mod heads;
mod import;
mod model;
mod personalizer;
mod store;
mod training;

pub use encoder::{Backend, Embeddings, EncodeListener, Encoder, EncoderOptions, OnnxEncoder, SILENT, Silent};
#[cfg(feature = "onnx")]
pub use encoder::{COMPILED_FILE, CompileReport, compile_model};
pub use error::{Error, Result};
pub use evaluation::{ClassMetrics, Metrics, evaluate};
pub use heads::{Head, HeadKind, Prediction};
pub use import::{Columns, ImportFormat, read_labelled, read_labelled_file};
pub use model::{CatalogEntry, CompiledFile, InputNames, ModelCatalog, ModelManifest, Pooling};
pub use personalizer::{
    Personalizer, PersonalizerConfig, PredictionSource, SearchHit, TaskUpgrade, TrainOutcome, UpgradeOutcome,
    VectorIndex,
};
pub use store::{
    AddOutcome, Document, EncryptionKey, Example, FeedbackEvent, Forget, ForgetOutcome, HeadInfo, LabelCount,
    NewDocument, NewExample, NewFeedback, NewHead, Retention, Signal, Store, StoreOptions, StoredHead, TaskId,
    TaskInfo, VectorEncoding,
};
pub use training::{
    CandidateReport, EpochProgress, HeadChoice, OptimizerKind, PrivacyOptions, PrivacySpent, PrivateRun,
    PromotionDecision, QuietTraining, TrainListener, TrainOptions, TrainReport, TrainingSet, decide_promotion,
    noise_for_budget, privacy_spent, train, zero_shot_head,
};
