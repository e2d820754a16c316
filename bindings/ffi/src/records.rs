//! Plain values that cross the boundary, and their conversions from and to
//! the runtime's types. Counts are `u64`, sizes `u32`, times milliseconds.

use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroize;

use crate::error::AttuneError;

/// Which inference engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Backend {
    /// Pure Rust, always available: Attune's own BERT layers on
    /// tract-linalg's kernels.
    Native,
    /// ONNX Runtime, when the build has it and the app ships `libonnxruntime`.
    Ort,
}

/// The key of an encrypted database. Keep it in the Android Keystore or the
/// iOS Keychain, never next to the database.
#[derive(uniffi::Enum)]
pub enum EncryptionKey {
    /// 32 random bytes.
    Raw { bytes: Vec<u8> },
    /// A passphrase, stretched by SQLCipher's key derivation.
    Passphrase { secret: String },
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

impl TryFrom<EncryptionKey> for attune::EncryptionKey {
    type Error = AttuneError;
    fn try_from(key: EncryptionKey) -> Result<Self, AttuneError> {
        match key {
            EncryptionKey::Raw { mut bytes } => {
                let mut raw = [0u8; 32];
                let fits = bytes.len() == raw.len();
                if fits {
                    raw.copy_from_slice(&bytes);
                }
                bytes.zeroize();
                let key = attune::EncryptionKey::raw(&raw);
                raw.zeroize();
                match fits {
                    true => Ok(key),
                    false => Err(AttuneError::EncryptionKey { reason: "a raw key must be exactly 32 bytes".into() }),
                }
            }
            EncryptionKey::Passphrase { secret } => Ok(attune::EncryptionKey::passphrase(secret)?),
        }
    }
}

/// Where the user's data and the model are, and how to run the model.
#[derive(Debug, uniffi::Record)]
pub struct Config {
    /// The database file (created if missing), e.g. in the app's files directory.
    pub database_path: String,
    /// A model directory with `manifest.json`, `model.onnx` and `tokenizer.json`.
    pub model_dir: String,
    #[uniffi(default = None)]
    pub backend: Option<Backend>,
    /// Threads one call may use (on tract, a call's length buckets run on
    /// that many threads at once); default: up to 4 cores.
    #[uniffi(default = None)]
    pub threads: Option<u32>,
    /// `libonnxruntime` for the `Ort` backend; default: `ORT_DYLIB_PATH`.
    #[uniffi(default = None)]
    pub ort_library: Option<String>,
    /// Opens or creates an encrypted database (builds with encryption only).
    #[uniffi(default = None)]
    pub encryption_key: Option<EncryptionKey>,
}

impl TryFrom<Config> for attune::PersonalizerConfig {
    type Error = AttuneError;
    fn try_from(config: Config) -> Result<Self, AttuneError> {
        Ok(Self {
            database: config.database_path.into(),
            model_dir: config.model_dir.into(),
            encoder: encoder_options(config.backend, config.threads, config.ort_library),
            encryption_key: config.encryption_key.map(TryInto::try_into).transpose()?,
        })
    }
}

/// How to run the model; `None` takes the runtime's default.
pub(crate) fn encoder_options(
    backend: Option<Backend>,
    threads: Option<u32>,
    ort_library: Option<String>,
) -> attune::EncoderOptions {
    let mut encoder = attune::EncoderOptions::default();
    if let Some(backend) = backend {
        encoder.backend = match backend {
            Backend::Native => attune::Backend::Native,
            Backend::Ort => attune::Backend::Ort,
        };
    }
    if let Some(threads) = threads {
        encoder.threads = threads as usize;
    }
    encoder.ort_library = ort_library.map(PathBuf::from);
    encoder
}

/// A text and its label.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct LabelledText {
    pub text: String,
    pub label: String,
}

impl From<LabelledText> for attune::NewExample {
    fn from(example: LabelledText) -> Self {
        attune::NewExample::new(example.text, example.label)
    }
}

/// What an add or import did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AddResult {
    /// New rows stored.
    pub inserted: u64,
    /// Same text and label as a stored example: kept once.
    pub duplicates: u64,
    /// Removed by the task's retention limits.
    pub evicted: u64,
}

impl From<attune::AddOutcome> for AddResult {
    fn from(o: attune::AddOutcome) -> Self {
        Self { inserted: o.inserted, duplicates: o.duplicates, evicted: o.evicted }
    }
}

/// A label and how many examples it has.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LabelCount {
    pub label: String,
    pub examples: u64,
}

impl From<attune::LabelCount> for LabelCount {
    fn from(c: attune::LabelCount) -> Self {
        Self { label: c.label, examples: c.examples }
    }
}

/// Which head to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum HeadType {
    /// The best on validation.
    Auto,
    Prototype,
    Linear,
    Mlp,
}

/// Whether training adapts the backbone's top layers before the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AdaptMode {
    /// When every label has enough examples and it validates better on
    /// held-out examples.
    Auto,
    /// Whenever labels have pairs to contrast (refused for a private task).
    Always,
    Never,
}

/// Training settings; the defaults need no tuning.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TrainSettings {
    /// Default: `Auto`.
    #[uniffi(default = None)]
    pub head: Option<HeadType>,
    /// Fixed epoch count instead of early stopping.
    #[uniffi(default = None)]
    pub epochs: Option<u32>,
    /// Keeps the best head found within this time.
    #[uniffi(default = None)]
    pub time_budget_ms: Option<u64>,
    #[uniffi(default = 0)]
    pub seed: u64,
    /// Trains a differentially private linear head within this task-wide ε.
    #[uniffi(default = None)]
    pub dp_epsilon: Option<f64>,
    /// Default: `Auto`.
    #[uniffi(default = None)]
    pub adapt: Option<AdaptMode>,
}

impl From<TrainSettings> for attune::TrainOptions {
    fn from(s: TrainSettings) -> Self {
        let head = match s.head.unwrap_or(HeadType::Auto) {
            HeadType::Auto => attune::HeadChoice::Auto,
            HeadType::Prototype => attune::HeadChoice::Only(attune::HeadKind::Prototype),
            HeadType::Linear => attune::HeadChoice::Only(attune::HeadKind::Linear),
            HeadType::Mlp => attune::HeadChoice::Only(attune::HeadKind::Mlp),
        };
        attune::TrainOptions {
            head,
            epochs: s.epochs.map(|e| e as usize),
            time_budget: s.time_budget_ms.map(Duration::from_millis),
            seed: s.seed,
            privacy: s.dp_epsilon.map(attune::PrivacyOptions::with_budget),
            adapt: match s.adapt.unwrap_or(AdaptMode::Auto) {
                AdaptMode::Auto => attune::AdaptChoice::Auto,
                AdaptMode::Always => attune::AdaptChoice::Always,
                AdaptMode::Never => attune::AdaptChoice::Never,
            },
            ..attune::TrainOptions::default()
        }
    }
}

/// Precision and recall of one label.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Examples of this label in the evaluated set.
    pub support: u64,
}

/// Quality on a labelled set; probabilities are calibrated.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Metrics {
    /// Examples scored.
    pub examples: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub log_loss: f64,
    /// Over 15 equal-width confidence bins.
    pub expected_calibration_error: f64,
    pub per_class: Vec<ClassMetrics>,
}

impl From<attune::Metrics> for Metrics {
    fn from(m: attune::Metrics) -> Self {
        Self {
            examples: m.n,
            accuracy: m.accuracy,
            macro_f1: m.macro_f1,
            log_loss: m.log_loss,
            expected_calibration_error: m.ece,
            per_class: m
                .per_class
                .into_iter()
                .map(|c| ClassMetrics {
                    label: c.label,
                    precision: c.precision,
                    recall: c.recall,
                    f1: c.f1,
                    support: c.support,
                })
                .collect(),
        }
    }
}

/// The kind of a trained head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum HeadKind {
    /// Class centroids scored by cosine (also zero-shot from descriptions).
    Prototype,
    /// Multinomial logistic regression.
    Linear,
    /// One hidden ReLU layer.
    Mlp,
}

impl From<attune::HeadKind> for HeadKind {
    fn from(kind: attune::HeadKind) -> Self {
        match kind {
            attune::HeadKind::Prototype => HeadKind::Prototype,
            attune::HeadKind::Linear => HeadKind::Linear,
            attune::HeadKind::Mlp => HeadKind::Mlp,
        }
    }
}

/// One head a training run tried, with the setting that distinguishes it.
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Enum)]
pub enum CandidateHead {
    Prototype,
    /// A linear head pulled towards its warm start by `pull` per step.
    Linear {
        pull: f32,
    },
    /// The MLP head, its hidden layer decayed by `decay` per step.
    Mlp {
        decay: f32,
    },
    /// The linear head trained with differentially private SGD.
    PrivateLinear {
        noise_multiplier: f64,
        clip_norm: f32,
    },
}

impl From<attune::CandidateHead> for CandidateHead {
    fn from(candidate: attune::CandidateHead) -> Self {
        match candidate {
            attune::CandidateHead::Prototype => CandidateHead::Prototype,
            attune::CandidateHead::Linear { pull } => CandidateHead::Linear { pull },
            attune::CandidateHead::Mlp { decay } => CandidateHead::Mlp { decay },
            attune::CandidateHead::PrivateLinear { noise_multiplier, clip_norm } => {
                CandidateHead::PrivateLinear { noise_multiplier, clip_norm }
            }
        }
    }
}

/// How a training run validated its candidates.
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Enum)]
pub enum ValidationMethod {
    /// Labels had too few examples to hold any out.
    None,
    /// A stratified holdout of this share of each label's examples.
    Holdout { fraction: f32 },
    /// Out-of-fold predictions of `k` stratified folds.
    KFold { k: u32 },
    /// A private run: nothing is validated on the private examples.
    DifferentialPrivacy,
}

impl From<attune::ValidationMethod> for ValidationMethod {
    fn from(method: attune::ValidationMethod) -> Self {
        match method {
            attune::ValidationMethod::None => ValidationMethod::None,
            attune::ValidationMethod::Holdout { fraction } => ValidationMethod::Holdout { fraction },
            attune::ValidationMethod::KFold { k } => ValidationMethod::KFold { k: k as u32 },
            attune::ValidationMethod::DifferentialPrivacy => ValidationMethod::DifferentialPrivacy,
        }
    }
}

/// How one candidate did on validation (calibrated, as it would be used).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct CandidateScore {
    pub candidate: CandidateHead,
    /// Accuracy and log loss on the held-out (or out-of-fold) examples.
    pub validation_accuracy: f64,
    pub validation_log_loss: f64,
    /// Epochs it trained (early stopping picks the best).
    pub epochs: u32,
}

/// What a training call did.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TrainSummary {
    /// The kind of head trained.
    pub head: HeadKind,
    /// The candidate that won validation, with its setting.
    pub chosen: CandidateHead,
    /// Every candidate tried and its validation score.
    pub candidates: Vec<CandidateScore>,
    pub validation_method: ValidationMethod,
    /// Examples and labels trained on.
    pub examples: u64,
    pub classes: u64,
    pub epochs: u32,
    pub train_ms: u64,
    /// Whether the new head is now the active one, and why (not).
    pub promoted: bool,
    pub promotion_reason: String,
    /// The stored version of the new head.
    pub version: u32,
    /// Metrics on held-out (or out-of-fold) examples, when there were enough.
    pub validation: Option<Metrics>,
    /// The time budget ran out; the best head found within it was kept.
    pub budget_exhausted: bool,
    /// For private training: the task's total (ε, δ) so far.
    pub privacy_epsilon: Option<f64>,
    pub privacy_delta: Option<f64>,
    /// The head's features come from the backbone's top layers adapted to
    /// the task (it carries them); otherwise `adaptation_note` says why not,
    /// when adaptation was allowed.
    pub adapted: bool,
    pub adaptation_note: Option<String>,
}

impl From<attune::TrainOutcome> for TrainSummary {
    fn from(o: attune::TrainOutcome) -> Self {
        let report = o.report;
        Self {
            head: report.head.into(),
            chosen: report.chosen.into(),
            candidates: report
                .candidates
                .iter()
                .map(|c| CandidateScore {
                    candidate: c.candidate.into(),
                    validation_accuracy: c.validation_accuracy,
                    validation_log_loss: c.validation_log_loss,
                    epochs: c.epochs as u32,
                })
                .collect(),
            validation_method: report.validation_method.into(),
            examples: report.examples,
            classes: report.classes,
            epochs: report.epochs as u32,
            train_ms: report.train_ms,
            promoted: o.promotion.promote,
            promotion_reason: o.promotion.reason,
            version: o.version,
            validation: report.validation.map(Into::into),
            budget_exhausted: report.budget_exhausted,
            privacy_epsilon: report.privacy.as_ref().map(|p| p.epsilon),
            privacy_delta: report.privacy.as_ref().map(|p| p.delta),
            adapted: report.adaptation.as_ref().is_some_and(|a| a.adapted),
            adaptation_note: report.adaptation.and_then(|a| a.skipped),
        }
    }
}

/// Where a task's predictions come from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PredictionSource {
    /// The task's active trained head.
    TrainedHead,
    /// A shared model from federated rounds, adopted on this device.
    SharedHead,
    /// Class centroids of the examples so far (no trained head yet).
    Prototypes,
    /// Label descriptions only (no examples yet).
    ZeroShot,
}

/// A label and how likely it is.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ScoredLabel {
    pub label: String,
    /// Calibrated probability.
    pub probability: f32,
}

/// The answer for one text.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Prediction {
    /// Most likely first.
    pub labels: Vec<ScoredLabel>,
    /// The text is probably none of the known labels.
    pub abstain: bool,
    pub source: PredictionSource,
}

impl Prediction {
    pub(crate) fn new(p: attune::Prediction, source: attune::PredictionSource) -> Self {
        Self {
            labels: p.top.into_iter().map(|s| ScoredLabel { label: s.label, probability: s.probability }).collect(),
            abstain: p.abstain,
            source: match source {
                attune::PredictionSource::TrainedHead => PredictionSource::TrainedHead,
                attune::PredictionSource::SharedHead => PredictionSource::SharedHead,
                attune::PredictionSource::Prototypes => PredictionSource::Prototypes,
                attune::PredictionSource::ZeroShot => PredictionSource::ZeroShot,
            },
        }
    }
}

/// What to forget.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum ForgetScope {
    Example {
        id: i64,
    },
    Label {
        label: String,
    },
    /// Every example, document and feedback query with this exact text.
    Text {
        text: String,
    },
    /// Everything created in `[from_ms, to_ms)` (milliseconds since the epoch).
    CreatedBetween {
        from_ms: i64,
        to_ms: i64,
    },
    Task,
    Everything,
}

impl From<ForgetScope> for attune::Forget {
    fn from(scope: ForgetScope) -> Self {
        match scope {
            ForgetScope::Example { id } => attune::Forget::Example(id),
            ForgetScope::Label { label } => attune::Forget::Label(label),
            ForgetScope::Text { text } => attune::Forget::Text(text),
            ForgetScope::CreatedBetween { from_ms, to_ms } => attune::Forget::CreatedBetween { from_ms, to_ms },
            ForgetScope::Task => attune::Forget::Task,
            ForgetScope::Everything => attune::Forget::Everything,
        }
    }
}

/// What a forget removed.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ForgetSummary {
    pub examples: u64,
    pub documents: u64,
    pub feedback: u64,
    pub vectors: u64,
    pub heads_invalidated: u64,
    /// What became of the task's head.
    pub retrain: Retrain,
}

/// Whether forgetting retrained the task's head.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Retrain {
    /// The active head was not trained on forgotten data (or there was none).
    NotNeeded,
    /// Retrained from what remains (privately for a private task).
    Retrained { version: u32, private: bool },
    /// No examples are left to train on.
    NoExamples,
    /// A private task whose budget cannot pay for a private retrain: it has
    /// no head now and predicts from its label descriptions.
    PublicStart { reason: String },
}

impl From<attune::ForgetReport> for ForgetSummary {
    fn from(report: attune::ForgetReport) -> Self {
        let o = report.forgotten;
        Self {
            examples: o.examples,
            documents: o.documents,
            feedback: o.feedback,
            vectors: o.vectors,
            heads_invalidated: o.heads_invalidated,
            retrain: match report.retrain {
                attune::Retrain::NotNeeded => Retrain::NotNeeded,
                attune::Retrain::Retrained { version, private } => Retrain::Retrained { version, private },
                attune::Retrain::NoExamples => Retrain::NoExamples,
                attune::Retrain::PublicStart { reason } => Retrain::PublicStart { reason },
            },
        }
    }
}

/// What a task holds.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TaskStats {
    pub name: String,
    /// Labelled examples, distinct labels among them, search documents and
    /// feedback events stored for the task.
    pub examples: u64,
    pub labels: u64,
    pub documents: u64,
    pub feedback: u64,
    /// The head predictions come from, if one is trained.
    pub active_head_version: Option<u32>,
    /// Examples with cached trunk states (tasks that adapt the backbone's
    /// top layers), and the bytes those states take.
    pub trunk_states: u64,
    pub trunk_state_bytes: u64,
}

impl From<attune::TaskInfo> for TaskStats {
    fn from(t: attune::TaskInfo) -> Self {
        Self {
            name: t.name,
            examples: t.examples,
            labels: t.labels,
            documents: t.documents,
            feedback: t.feedback,
            active_head_version: t.active_head_version,
            trunk_states: t.trunk_states,
            trunk_state_bytes: t.trunk_state_bytes,
        }
    }
}

/// One stored head version.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct HeadVersion {
    /// 1 for the task's first head, then counting up.
    pub version: u32,
    pub kind: HeadKind,
    /// Calibrated metrics on the examples it was validated on, if any.
    pub validation: Option<Metrics>,
    /// Trained on since-forgotten data: erased, cannot be activated.
    pub stale: bool,
    /// The head the task predicts with now.
    pub active: bool,
    /// When it was trained (milliseconds since the epoch).
    pub created_at_ms: i64,
    /// Trained with differential privacy; then `epsilon` and `delta` are the
    /// task's (ε, δ) spent up to and including this head.
    pub private: bool,
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
}

impl From<attune::HeadVersion> for HeadVersion {
    fn from(h: attune::HeadVersion) -> Self {
        Self {
            version: h.version,
            kind: h.kind.into(),
            validation: h.validation.map(Into::into),
            stale: h.stale,
            active: h.active,
            created_at_ms: h.created_at_ms,
            private: h.privacy.is_some(),
            epsilon: h.privacy.map(|p| p.epsilon),
            delta: h.privacy.map(|p| p.delta),
        }
    }
}

/// A document for search, under the app's own key.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Document {
    pub key: String,
    pub text: String,
    /// A JSON object returned with results.
    #[uniffi(default = None)]
    pub metadata: Option<String>,
}

impl From<Document> for attune::NewDocument {
    fn from(d: Document) -> Self {
        Self { key: d.key, text: d.text, metadata: d.metadata }
    }
}

/// One search or recommendation result.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SearchResult {
    /// The document's key, text and metadata as the app stored them.
    pub key: String,
    pub text: String,
    pub metadata: Option<String>,
    /// Cosine to the query plus the learned preference.
    pub score: f32,
}

impl From<attune::SearchHit> for SearchResult {
    fn from(h: attune::SearchHit) -> Self {
        Self { key: h.key, text: h.text, metadata: h.metadata, score: h.score }
    }
}

/// What the user did with a result.
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Enum)]
pub enum Signal {
    Impression,
    Click,
    Skip,
    Dwell { seconds: f64 },
    Rating { stars: f64 },
}

/// Feedback on a search result (`query` set) or a recommendation (`query` null).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Feedback {
    pub query: Option<String>,
    pub document_key: String,
    pub signal: Signal,
    /// Default: now.
    #[uniffi(default = None)]
    pub created_at_ms: Option<i64>,
}

impl From<Feedback> for attune::NewFeedback {
    fn from(f: Feedback) -> Self {
        let signal = match f.signal {
            Signal::Impression => attune::Signal::Impression,
            Signal::Click => attune::Signal::Click,
            Signal::Skip => attune::Signal::Skip,
            Signal::Dwell { seconds } => attune::Signal::Dwell(seconds),
            Signal::Rating { stars } => attune::Signal::Rating(stars),
        };
        Self { query: f.query, document_key: f.document_key, signal, created_at: f.created_at_ms }
    }
}

/// What a model upgrade did.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct UpgradeSummary {
    pub from_fingerprint: String,
    pub to_fingerprint: String,
    /// Stored texts that needed the new model's vectors, and how many of
    /// them this call embedded (the rest an earlier, interrupted call did).
    pub texts: u64,
    pub embedded_now: u64,
    /// Per task with examples: its new, now active, head.
    pub retrained: Vec<TaskHead>,
    /// Tasks that got no new head, and why (no examples; a private task
    /// whose budget is spent, now on its label descriptions).
    pub skipped: Vec<SkippedTask>,
}

/// A task a model upgrade gave no new head, and why.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SkippedTask {
    pub task: String,
    pub reason: String,
}

/// A task's new head after a model upgrade.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TaskHead {
    pub task: String,
    pub summary: TrainSummary,
}

impl From<attune::UpgradeOutcome> for UpgradeSummary {
    fn from(o: attune::UpgradeOutcome) -> Self {
        Self {
            from_fingerprint: o.from_fingerprint,
            to_fingerprint: o.to_fingerprint,
            texts: o.texts,
            embedded_now: o.embedded_now,
            retrained: o
                .tasks
                .iter()
                .filter_map(|t| {
                    t.trained.clone().map(|trained| TaskHead { task: t.task.clone(), summary: trained.into() })
                })
                .collect(),
            skipped: o
                .tasks
                .into_iter()
                .filter_map(|t| t.skipped.map(|reason| SkippedTask { task: t.task, reason }))
                .collect(),
        }
    }
}
