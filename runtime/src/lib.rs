//! Attune: on-device personalization.
//!
//! A frozen ONNX sentence encoder turns text into features on the device; small
//! heads are trained on the device from the user's own data. Nothing here opens
//! a network connection: models and data arrive as files.

mod encoder;
mod error;
mod evaluation;
mod federated;
mod heads;
mod import;
mod model;
mod numeric;
mod personalizer;
mod store;
mod training;
// Top layers in our own code, for on-device adaptation (issue 17, being
// built): only tests use it yet.
mod transformer;

pub use encoder::{Backend, Embeddings, EncodeListener, Encoder, EncoderOptions, OnnxEncoder, SILENT, Silent};
#[cfg(feature = "onnx")]
pub use encoder::{COMPILED_FILE, CompileReport, compile_model};
pub use error::{Error, Result};
pub use evaluation::{ClassMetrics, Metrics, evaluate};
pub use federated::SharedModel;
pub use heads::{Head, HeadKind, Prediction, TopChanges};
pub use import::{Columns, ImportFormat, read_labelled, read_labelled_file};
pub use model::{CatalogEntry, CompiledFile, InputNames, ModelCatalog, ModelManifest, Pooling, Precision};
pub use personalizer::{
    AdoptOutcome, FederatedUpdate, ForgetReport, Personalizer, PersonalizerConfig, PredictionSource, Retrain,
    SearchHit, TaskUpgrade, TrainOutcome, UpgradeOutcome,
};
pub use store::{
    AddOutcome, Document, EncryptionKey, Example, FeedbackEvent, Forget, ForgetOutcome, HeadInfo, KEPT_HEAD_VERSIONS,
    LabelCount, NewDocument, NewExample, NewFeedback, Retention, Signal, Store, StoreOptions, TaskId, TaskInfo,
    TrunkKey, TrunkStateRows, VectorEncoding,
};
pub use training::{
    AdaptChoice, AdaptOptions, AdaptationReport, CandidateHead, CandidateReport, EpochProgress, FederatedOptions,
    HeadChoice, OptimizerKind, PrivacyOptions, PrivacySpent, PrivateRun, PromotionBasis, PromotionDecision,
    QuietTraining, TrainListener, TrainOptions, TrainReport, TrainingSet, UpdatePrivacy, ValidationMethod, train,
    zero_shot_head,
};

/// Building blocks that the CLI's benchmarks and the tests reach for —
/// the promotion rule on its own, the privacy accountant, the raw search
/// index and stored-head records. Not part of the API apps build on: they
/// may change with any release.
pub mod internal {
    pub use crate::personalizer::VectorIndex;
    pub use crate::store::{HeadPrivacy, LedgerEntry, NewHead, StoredHead};
    pub use crate::training::{ActiveHeadEvidence, decide_promotion, noise_for_budget, privacy_spent};
    /// Adaptation of the backbone's top layers on its own: `attune bench
    /// adapt` measures it.
    pub use crate::training::{AdaptedTop, TrunkStates};
}
