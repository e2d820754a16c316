//! Attune: on-device personalization.
//!
//! A frozen ONNX sentence encoder turns text into features on the device; small
//! heads are trained on the device from the user's own data. Nothing here opens
//! a network connection: models and data arrive as files.

mod encoder;
mod error;
mod model;
mod store;

pub use encoder::{Backend, Embeddings, EncodeListener, Encoder, EncoderOptions, OnnxEncoder, SILENT, Silent};
pub use error::{Error, Result};
pub use model::{CatalogEntry, InputNames, ModelCatalog, ModelManifest, Pooling};
pub use store::{
    AddOutcome, Document, EncryptionKey, Example, FeedbackEvent, Forget, ForgetOutcome, HeadInfo, LabelCount,
    NewDocument, NewExample, NewFeedback, NewHead, Retention, Signal, Store, StoreOptions, StoredHead, TaskId,
    TaskInfo, VectorEncoding,
};
