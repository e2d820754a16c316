//! The frozen backbone: texts in, one normalised vector per text out.
//!
//! What runs on a phone: tokenizers, batching, the engines (`engine/`) and
//! pooling, with the compiled-graph format they read (`compiled_graph/`).
//! What runs once, offline: `compile/`, which turns an ONNX model into
//! that format (f32 or int8).

mod batching;
#[cfg(feature = "onnx")]
mod compile;
#[cfg(feature = "tract")]
mod compiled_graph;
mod engine;
mod pooling;
mod tokenize;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
#[cfg(feature = "tract")]
use std::sync::{Arc, Mutex};

use batching::{TokenBatch, plan_batches};
#[cfg(feature = "onnx")]
pub use compile::{COMPILED_FILE, CompileReport, compile_model};
use engine::Engine;
use tokenize::{TextTokenizer, Tokens};

use crate::error::{Error, Result};
use crate::model::{ModelManifest, Pooling};
use crate::transformer::Layer;

/// Texts are cut to this many bytes per allowed token before tokenising, so a
/// multi-megabyte text costs no more than one that fills the model's window.
/// WordPiece never maps more than ~100 characters to one token.
const BYTES_PER_TOKEN_CAP: usize = 256;

/// Turns texts into sentence vectors. Implementations are `Send + Sync` and
/// may be called from several threads at once.
pub trait Encoder: Send + Sync {
    /// Width of every vector this encoder returns.
    fn dim(&self) -> usize;
    /// Identity of the backbone (model + tokenizer); features are keyed on it.
    fn fingerprint(&self) -> &str;
    /// The model's name, for people (reports, logs); the fingerprint unless
    /// the encoder knows better.
    fn model_id(&self) -> &str {
        self.fingerprint()
    }
    /// Embeds `texts`, reporting progress per batch and honouring cancellation.
    fn embed_with(&self, texts: &[&str], listener: &dyn EncodeListener) -> Result<Embeddings>;

    /// Embeds `texts` in order. An empty slice is an `InvalidInput` error.
    fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        self.embed_with(texts, &SILENT)
    }

    /// The backbone's top `count` transformer layers, for adapting them on
    /// the device. Encoders that cannot be split refuse with `CannotAdapt`.
    fn top_layers(&self, count: usize) -> Result<TopLayers> {
        let _ = count;
        Err(Error::CannotAdapt("this encoder cannot be split into trunk and top layers".into()))
    }

    /// Each text's token states below its top `count` layers (what
    /// `top_layers(count)` takes), over its real tokens.
    fn trunk_states(&self, texts: &[&str], count: usize, listener: &dyn EncodeListener) -> Result<Vec<TokenStates>> {
        let _ = (texts, count, listener);
        Err(Error::CannotAdapt("this encoder cannot be split into trunk and top layers".into()))
    }
}

/// One text's token states inside the backbone: `tokens × width` values,
/// token after token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStates {
    pub tokens: usize,
    pub width: usize,
    pub values: Vec<f32>,
}

/// The top of a backbone: its transformer layers' weights, and how their
/// output becomes a sentence vector.
#[derive(Debug, Clone)]
pub struct TopLayers {
    pub layers: Vec<Layer>,
    pub pooling: Pooling,
    pub normalize: bool,
}

/// Observes a long embedding call and may cancel it between batches.
pub trait EncodeListener: Sync {
    /// `done` of `total` texts are embedded.
    fn on_progress(&self, _done: usize, _total: usize) {}
    /// Polled before each batch; `true` stops the call with `Error::Cancelled`.
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// A listener that ignores progress and never cancels.
#[derive(Debug, Clone, Copy)]
pub struct Silent;
impl EncodeListener for Silent {}
/// The listener `Encoder::embed` uses.
pub const SILENT: Silent = Silent;

/// Row-major matrix of sentence vectors, one row per input text.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    dim: usize,
    values: Vec<f32>,
}

impl Embeddings {
    pub fn from_values(dim: usize, values: Vec<f32>) -> Result<Self> {
        if dim == 0 || !values.len().is_multiple_of(dim) {
            return Err(Error::InvalidInput(format!("{} values do not form rows of width {dim}", values.len())));
        }
        Ok(Self { dim, values })
    }
    pub fn len(&self) -> usize {
        self.values.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn row(&self, index: usize) -> &[f32] {
        &self.values[index * self.dim..(index + 1) * self.dim]
    }
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[f32]> {
        self.values.chunks_exact(self.dim)
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.values
    }
    pub fn into_vecs(self) -> Vec<Vec<f32>> {
        self.rows().map(<[f32]>::to_vec).collect()
    }
}

/// Which inference engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Pure Rust (cargo feature `tract`, on by default): Attune's own BERT
    /// layers on tract-linalg's matrix kernels, with tract running the rest
    /// of the graph (and whole graphs whose layers it does not recognise).
    /// `"tract"`, its former name, is accepted too.
    Native,
    /// ONNX Runtime, loaded at run time (cargo feature `ort`).
    Ort,
}

impl Default for Backend {
    /// The native engine when compiled in, else ONNX Runtime.
    fn default() -> Self {
        if cfg!(feature = "tract") { Backend::Native } else { Backend::Ort }
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "native" | "tract" => Ok(Backend::Native),
            "ort" => Ok(Backend::Ort),
            other => Err(Error::InvalidInput(format!("unknown backend {other:?} (native or ort)"))),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Native => "native",
            Backend::Ort => "ort",
        })
    }
}

/// How to load an encoder.
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    pub backend: Backend,
    /// Threads one call may use (phones: 2 to 4 big cores): on tract, a
    /// call's length buckets run on that many threads at once (a call of
    /// several texts is split into at least as many buckets); ONNX Runtime
    /// splits each product over them.
    pub threads: usize,
    /// Most texts run through the model at once.
    pub max_batch: usize,
    /// `libonnxruntime` for the `ort` backend; `ORT_DYLIB_PATH` when `None`.
    pub ort_library: Option<PathBuf>,
}

impl EncoderOptions {
    /// The defaults, on `backend`, with `threads` when given.
    pub fn on(backend: Backend, threads: Option<usize>) -> Self {
        let defaults = Self::default();
        Self { backend, threads: threads.unwrap_or(defaults.threads), ..defaults }
    }
}

impl Default for EncoderOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self { backend: Backend::default(), threads: cores.min(4), max_batch: 32, ort_library: None }
    }
}

/// A sentence encoder over an ONNX model directory (see `models/`).
pub struct OnnxEncoder {
    manifest: ModelManifest,
    tokenizer: TextTokenizer,
    engine: Box<dyn Engine>,
    options: EncoderOptions,
    /// Built on first use by adaptation, for one layer count at a time.
    #[cfg(feature = "tract")]
    trunk: Mutex<Option<Arc<Trunk>>>,
}

/// The graph cut below its top layers, and those layers.
#[cfg(feature = "tract")]
struct Trunk {
    count: usize,
    engine: engine::native::NativeEngine,
    top: Vec<Layer>,
}

/// The engine `options` name, for `manifest`'s model.
fn engine_for(manifest: &ModelManifest, options: &EncoderOptions) -> Result<Box<dyn Engine>> {
    Ok(match options.backend {
        #[cfg(feature = "tract")]
        Backend::Native => engine::native::load(manifest, options.threads)?,
        #[cfg(not(feature = "tract"))]
        Backend::Native => {
            return Err(Error::BackendUnavailable {
                backend: "tract".into(),
                reason: "this build has no tract support (cargo feature `tract`)".into(),
            });
        }
        #[cfg(feature = "ort")]
        Backend::Ort => {
            Box::new(engine::ort::OrtEngine::load(manifest, options.threads, options.ort_library.as_deref())?)
        }
        #[cfg(not(feature = "ort"))]
        Backend::Ort => {
            return Err(Error::BackendUnavailable {
                backend: "ort".into(),
                reason: "this build has no ONNX Runtime support (cargo feature `ort`)".into(),
            });
        }
    })
}

impl fmt::Debug for OnnxEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxEncoder")
            .field("model", &self.manifest.id)
            .field("backend", &self.options.backend)
            .field("dim", &self.manifest.dim)
            .finish_non_exhaustive()
    }
}

impl OnnxEncoder {
    /// Loads and checks the model in `directory`. Fails with a typed error when
    /// the files are missing or corrupt, or the model, tokenizer and manifest
    /// do not fit together; on success the model has already run once.
    pub fn load(directory: &Path, options: &EncoderOptions) -> Result<Self> {
        Self::load_with(directory, options, |manifest| engine_for(manifest, options))
    }

    /// As `load`, on the engine `engine` makes for the model's manifest.
    fn load_with(
        directory: &Path,
        options: &EncoderOptions,
        engine: impl FnOnce(&ModelManifest) -> Result<Box<dyn Engine>>,
    ) -> Result<Self> {
        if options.max_batch == 0 || options.threads == 0 {
            return Err(Error::InvalidInput("max_batch and threads must be at least 1".into()));
        }
        let manifest = ModelManifest::load(directory)?;
        let tokenizer = TextTokenizer::load(&manifest.tokenizer_path(), manifest.max_tokens)?;
        let engine = engine(&manifest)?;
        let encoder = Self {
            manifest,
            tokenizer,
            engine,
            options: options.clone(),
            #[cfg(feature = "tract")]
            trunk: Mutex::new(None),
        };
        encoder.probe()?;
        Ok(encoder)
    }

    /// The matrix-product kernels running this model (tract: tract-linalg's
    /// kernel names, e.g. `avx512vnni_mmm_i32_8x8` or `arm64simd_mmm_i32_8x8`,
    /// with how many products use each), so a reader can tell an int8 dot
    /// product kernel from a generic fallback. Empty for ONNX Runtime.
    pub fn matrix_kernels(&self) -> Vec<(String, usize)> {
        self.engine.matrix_kernels()
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    pub fn backend(&self) -> Backend {
        self.options.backend
    }

    /// The options it was loaded with (a model upgrade loads the new model alike).
    pub fn options(&self) -> &EncoderOptions {
        &self.options
    }

    /// Runs the tokenizer's highest id through the model. A vocabulary larger
    /// than the model's embedding table, or an output width other than the
    /// manifest's, is caught here instead of on a user's text.
    fn probe(&self) -> Result<()> {
        if let Some(rows) = self.engine.vocabulary_size()
            && self.tokenizer.highest_id() as usize >= rows
        {
            return Err(Error::ModelMismatch(format!(
                "the tokenizer's ids reach {}, the model's vocabulary has {rows} rows",
                self.tokenizer.highest_id()
            )));
        }
        let mut tokens = self.tokenizer.encode("probe")?;
        let last = tokens.ids.len() / 2;
        tokens.ids[last] = i64::from(self.tokenizer.highest_id());
        let batch = TokenBatch::pad(&[&tokens]);
        let mut width = 0;
        // Second line of defence for engines that cannot report their table
        // size: tract indexes it directly, and an id beyond it panics.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.engine.run(&batch, &mut |_, w| {
                width = w;
                Ok(())
            })
        }));
        match outcome {
            Ok(Ok(())) if width == self.manifest.dim => Ok(()),
            Ok(Ok(())) => Err(Error::ModelMismatch(format!(
                "the model's output width is {width}, the manifest says {}",
                self.manifest.dim
            ))),
            Ok(Err(Error::Inference(reason))) | Ok(Err(Error::ModelMismatch(reason))) => Err(Error::ModelMismatch(
                format!("the model rejected token id {} of its tokenizer: {reason}", self.tokenizer.highest_id()),
            )),
            Ok(Err(other)) => Err(other),
            Err(_) => Err(Error::ModelMismatch(format!(
                "the tokenizer's ids (up to {}) do not fit the model's vocabulary",
                self.tokenizer.highest_id()
            ))),
        }
    }

    fn tokenize(&self, text: &str) -> Result<Tokens> {
        let cap = self.manifest.max_tokens.saturating_mul(BYTES_PER_TOKEN_CAP);
        let mut end = text.len().min(cap);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.tokenizer.encode(&text[..end])
    }
}

impl Encoder for OnnxEncoder {
    fn dim(&self) -> usize {
        self.manifest.dim
    }

    fn fingerprint(&self) -> &str {
        &self.manifest.fingerprint
    }

    fn model_id(&self) -> &str {
        &self.manifest.id
    }

    fn embed_with(&self, texts: &[&str], listener: &dyn EncodeListener) -> Result<Embeddings> {
        if texts.is_empty() {
            return Err(Error::InvalidInput("no texts to embed".into()));
        }
        let tokens = texts.iter().map(|t| self.tokenize(t)).collect::<Result<Vec<_>>>()?;
        let lengths: Vec<usize> = tokens.iter().map(|t| t.ids.len()).collect();
        let parallel = self.engine.runs_batches_in_parallel() && self.options.threads > 1;
        // Enough batches for every thread: a call of 32 texts on two threads
        // runs as two batches of 16, each on its own thread.
        let max_rows = if parallel {
            self.options.max_batch.min(texts.len().div_ceil(self.options.threads))
        } else {
            self.options.max_batch
        };
        let batches = plan_batches(&lengths, max_rows.max(1));
        let dim = self.manifest.dim;
        let mut values = vec![0.0f32; texts.len() * dim];
        let mut done = 0;
        let mut store = |members: &[usize], pooled: &[f32]| {
            for (row, &index) in members.iter().enumerate() {
                values[index * dim..(index + 1) * dim].copy_from_slice(&pooled[row * dim..(row + 1) * dim]);
            }
            done += members.len();
            listener.on_progress(done, texts.len());
        };
        let workers = if parallel { self.options.threads.min(batches.len()) } else { 1 };
        if workers > 1 {
            self.embed_in_parallel(&tokens, &batches, workers, listener, &mut store)?;
        } else {
            for members in &batches {
                if listener.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let pooled = self.embed_batch(&tokens, members, false)?;
                store(members, &pooled);
            }
        }
        Embeddings::from_values(dim, values)
    }

    #[cfg(feature = "tract")]
    fn top_layers(&self, count: usize) -> Result<TopLayers> {
        let trunk = self.trunk(count)?;
        Ok(TopLayers { layers: trunk.top.clone(), pooling: self.manifest.pooling, normalize: self.manifest.normalize })
    }

    #[cfg(feature = "tract")]
    fn trunk_states(&self, texts: &[&str], count: usize, listener: &dyn EncodeListener) -> Result<Vec<TokenStates>> {
        if texts.is_empty() {
            return Err(Error::InvalidInput("no texts to run through the trunk".into()));
        }
        let trunk = self.trunk(count)?;
        let tokens = texts.iter().map(|t| self.tokenize(t)).collect::<Result<Vec<_>>>()?;
        let lengths: Vec<usize> = tokens.iter().map(|t| t.ids.len()).collect();
        let mut states: Vec<Option<TokenStates>> = vec![None; texts.len()];
        let mut done = 0;
        for members in plan_batches(&lengths, self.options.max_batch) {
            if listener.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let batch = TokenBatch::pad(&members.iter().map(|&i| &tokens[i]).collect::<Vec<_>>());
            trunk.engine.run(&batch, &mut |hidden, width| {
                for (row, &index) in members.iter().enumerate() {
                    let start = row * batch.seq * width;
                    let real = &hidden[start..start + lengths[index] * width];
                    states[index] = Some(TokenStates { tokens: lengths[index], width, values: real.to_vec() });
                }
                Ok(())
            })?;
            done += members.len();
            listener.on_progress(done, texts.len());
        }
        Ok(states.into_iter().map(|s| s.expect("every text is in a batch")).collect())
    }
}

#[cfg(feature = "tract")]
impl OnnxEncoder {
    /// The trunk for `count` top layers, built once (a second count
    /// replaces it: a task adapts one count at a time).
    fn trunk(&self, count: usize) -> Result<Arc<Trunk>> {
        let mut slot = self.trunk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(trunk) = slot.as_ref().filter(|t| t.count == count) {
            return Ok(Arc::clone(trunk));
        }
        if self.manifest.precision() == crate::model::Precision::Int8 {
            return Err(Error::CannotAdapt("an int8-compiled model has no f32 weights to adapt".into()));
        }
        let (engine, top) = engine::native::NativeEngine::load_trunk(&self.manifest, self.options.threads, count)?;
        let trunk = Arc::new(Trunk { count, engine, top });
        *slot = Some(Arc::clone(&trunk));
        Ok(trunk)
    }
}

impl OnnxEncoder {
    /// The pooled vectors of `members` of `tokens`, row after row.
    fn embed_batch(&self, tokens: &[Tokens], members: &[usize], on_one_thread: bool) -> Result<Vec<f32>> {
        let dim = self.manifest.dim;
        let batch = TokenBatch::pad(&members.iter().map(|&i| &tokens[i]).collect::<Vec<_>>());
        let mut pooled = vec![0.0f32; members.len() * dim];
        let mut pool = |hidden: &[f32], width: usize| {
            if width != dim {
                return Err(Error::ModelMismatch(format!("output width {width}, manifest says {dim}")));
            }
            let shape = (batch.rows, batch.seq, width);
            pooling::pool_rows(hidden, &batch.mask, shape, self.manifest.pooling, self.manifest.normalize, &mut pooled);
            Ok(())
        };
        if on_one_thread {
            self.engine.run_on_one_thread(&batch, &mut pool)
        } else {
            self.engine.run(&batch, &mut pool)
        }?;
        Ok(pooled)
    }

    /// Whole batches on `workers` threads at once, each batch on one thread
    /// (short sentences' products are too small to split well). Results,
    /// progress and cancellation go through the calling thread, which is the
    /// only one to call `listener`.
    fn embed_in_parallel(
        &self,
        tokens: &[Tokens],
        batches: &[Vec<usize>],
        workers: usize,
        listener: &dyn EncodeListener,
        store: &mut dyn FnMut(&[usize], &[f32]),
    ) -> Result<()> {
        if listener.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let (results, received) = mpsc::channel();
            for _ in 0..workers {
                let results = results.clone();
                let (next, stop) = (&next, &stop);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(members) = batches.get(index) else { break };
                        let outcome = catch_unwind(AssertUnwindSafe(|| self.embed_batch(tokens, members, true)))
                            .unwrap_or_else(|_| Err(Error::Inference("the engine panicked".into())));
                        if results.send((index, outcome)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(results);
            let mut outcome = Ok(());
            for (index, result) in received {
                // After a failure or cancellation the workers stop; what they
                // still send is dropped.
                if outcome.is_err() {
                    continue;
                }
                outcome = result.and_then(|pooled| {
                    store(&batches[index], &pooled);
                    if listener.is_cancelled() { Err(Error::Cancelled) } else { Ok(()) }
                });
                if outcome.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            outcome
        })
    }
}
