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
mod search;
mod store;
#[cfg(test)]
mod test_rng;
mod training;
// BERT layers in our own code: the native forward of the tract engine, and
// the top layers that on-device adaptation trains.
mod transformer;

pub use encoder::{
    Backend, Embeddings, EncodeListener, Encoder, EncoderOptions, OnnxEncoder, SILENT, Silent, TokenStates,
};
#[cfg(feature = "onnx")]
pub use encoder::{COMPILED_FILE, CompileReport, compile_model};
pub use error::{Error, Result};
pub use evaluation::{ClassMetrics, Metrics, evaluate};
pub use federated::SharedModel;
pub use heads::{Head, HeadKind, Prediction, ScoredLabel, TopChanges};
pub use import::{Columns, ImportFormat, read_labelled, read_labelled_file};
pub use model::{CatalogEntry, CompiledFile, InputNames, ModelCatalog, ModelManifest, Pooling, Precision};
pub use personalizer::{
    AdoptOutcome, FederatedUpdate, ForgetReport, HeadVersion, Personalizer, PersonalizerConfig, PredictionSource,
    PrivacyBound, Retrain, TaskUpgrade, TaskVectors, TrainOutcome, UpgradeOutcome,
};
pub use search::{SearchHit, VectorIndex};
pub use store::{
    AddOutcome, Document, EncryptionKey, Example, FeedbackEvent, Forget, ForgetOutcome, HeadInfo, HeadPrivacy,
    KEPT_HEAD_VERSIONS, LabelCount, LedgerEntry, NewDocument, NewExample, NewFeedback, NewHead, Retention, SaveAs,
    Signal, Store, StoreOptions, StoredHead, TaskId, TaskInfo, TrunkKey, TrunkStateRows, VectorEncoding,
};
pub use training::{
    AdaptChoice, AdaptOptions, AdaptationReport, CandidateHead, CandidateReport, EpochProgress, FederatedOptions,
    HeadChoice, OptimizerKind, PrivacyOptions, PrivacySpent, PrivateRun, PromotionBasis, PromotionDecision,
    QuietTraining, TrainListener, TrainOptions, TrainReport, TrainingSet, UpdatePrivacy, ValidationMethod, train,
    zero_shot_head,
};

/// The README's Rust sample, compiled by `cargo test` as a doctest so that
/// it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeSample;
