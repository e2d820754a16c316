//! The encoder on real ONNX models: the committed tiny model always, and the
//! default model when `models/fetch` has put it in the cache (CI does).

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use attune::{Backend, EncodeListener, Encoder, EncoderOptions, Error, OnnxEncoder};
use support::{Golden, cosine, default_model_dir, repo, sentences, tiny_dir, tracked_copy};

fn load(dir: &Path, backend: Backend) -> OnnxEncoder {
    let options = EncoderOptions { backend, ..EncoderOptions::default() };
    OnnxEncoder::load(dir, &options).unwrap_or_else(|e| panic!("loading {} on {backend}: {e}", dir.display()))
}

fn backends() -> Vec<Backend> {
    let mut compiled = Vec::new();
    if cfg!(feature = "tract") {
        compiled.push(Backend::Native);
    }
    if cfg!(feature = "ort") {
        compiled.push(Backend::Ort);
    }
    compiled
}

/// Every backend, batched and length-bucketed, against Python onnxruntime run
/// one text at a time.
fn check_against_golden(dir: &Path, golden_file: &Path) {
    let golden = Golden::read(golden_file);
    let texts: Vec<&str> = golden.texts.iter().map(|t| t.text.as_str()).collect();
    for backend in backends() {
        let encoder = load(dir, backend);
        assert_eq!(encoder.fingerprint(), golden.fingerprint, "golden file is for this model");
        let embeddings = encoder.embed(&texts).unwrap();
        assert_eq!(embeddings.len(), texts.len());
        for (row, expected) in embeddings.rows().zip(&golden.texts) {
            let similarity = cosine(row, &expected.embedding);
            assert!(similarity >= 0.9999, "{backend}: cosine {similarity} for {:?}", expected.text);
            let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "normalised");
        }
    }
}

#[test]
fn tiny_model_matches_python_onnxruntime() {
    check_against_golden(&tiny_dir(), &tiny_dir().join("golden.json"));
}

#[test]
fn default_model_matches_python_onnxruntime() {
    let Some(dir) = default_model_dir() else {
        return;
    };
    check_against_golden(&dir, &repo().join("models/golden-all-minilm-l6-v2.json"));
}

#[test]
fn backends_agree_on_varied_sentences() {
    if !cfg!(feature = "ort") {
        return;
    }
    let mut dirs = vec![tiny_dir()];
    dirs.extend(default_model_dir());
    let texts = sentences();
    assert!(texts.len() >= 200);
    for dir in dirs {
        let tract = load(&dir, Backend::Native).embed(&texts).unwrap();
        let ort = load(&dir, Backend::Ort).embed(&texts).unwrap();
        let worst = tract.rows().zip(ort.rows()).map(|(a, b)| cosine(a, b)).fold(1.0f32, f32::min);
        assert!(worst >= 0.9999, "{}: worst cosine tract vs ort {worst}", dir.display());
    }
}

#[test]
fn batching_does_not_change_results_or_order() {
    let texts = sentences();
    let texts = &texts[..40];
    let batched = OnnxEncoder::load(&tiny_dir(), &EncoderOptions { max_batch: 7, ..Default::default() })
        .unwrap()
        .embed(texts)
        .unwrap();
    let one_by_one = load(&tiny_dir(), Backend::Native);
    for (i, text) in texts.iter().enumerate() {
        let alone = one_by_one.embed(&[text]).unwrap();
        let similarity = cosine(alone.row(0), batched.row(i));
        assert!(similarity > 0.99999, "text {i} moved or changed: {similarity}");
    }
}

#[test]
fn batches_on_several_threads_keep_results_order_and_the_callers_thread() {
    struct OnCaller {
        caller: std::thread::ThreadId,
        reports: std::sync::Mutex<Vec<(usize, std::thread::ThreadId)>>,
    }
    impl EncodeListener for OnCaller {
        fn on_progress(&self, done: usize, _total: usize) {
            self.reports.lock().unwrap().push((done, std::thread::current().id()));
        }
    }
    let texts = sentences();
    let texts = &texts[..40];
    let options = |threads| EncoderOptions { max_batch: 4, threads, ..Default::default() };
    let alone = OnnxEncoder::load(&tiny_dir(), &options(1)).unwrap().embed(texts).unwrap();
    let listener = OnCaller { caller: std::thread::current().id(), reports: Default::default() };
    let parallel = OnnxEncoder::load(&tiny_dir(), &options(2)).unwrap().embed_with(texts, &listener).unwrap();
    for i in 0..texts.len() {
        assert!(cosine(alone.row(i), parallel.row(i)) > 0.99999, "text {i} moved or changed");
    }
    let reports = listener.reports.into_inner().unwrap();
    assert_eq!(reports.len(), 10, "one report per batch of 4");
    assert!(reports.windows(2).all(|w| w[0].0 < w[1].0) && reports.last().unwrap().0 == 40, "{reports:?}");
    assert!(reports.iter().all(|(_, thread)| *thread == listener.caller), "progress only on the caller's thread");
}

#[test]
fn cancellation_stops_batches_on_several_threads() {
    let options = EncoderOptions { max_batch: 4, threads: 2, ..Default::default() };
    let encoder = OnnxEncoder::load(&tiny_dir(), &options).unwrap();
    let texts = sentences();
    let listener = CancelAfterFirst(AtomicUsize::new(0));
    assert!(matches!(encoder.embed_with(&texts[..40], &listener), Err(Error::Cancelled)));
    assert_eq!(listener.0.load(Ordering::SeqCst), 4, "results after the cancellation are dropped");
}

#[test]
fn empty_and_huge_texts_are_embedded() {
    let encoder = load(&tiny_dir(), Backend::Native);
    let huge = "word ".repeat(2_000_000);
    let embeddings = encoder.embed(&["", &huge, "\u{0}\u{7}\u{1b}[31m control"]).unwrap();
    assert!(embeddings.as_slice().iter().all(|x| x.is_finite()));
    let truncated = encoder.embed(&[&"word ".repeat(200)]).unwrap();
    assert!(cosine(embeddings.row(1), truncated.row(0)) > 0.99999, "cut at the window like a shorter text");
}

#[test]
fn empty_batch_is_invalid_input() {
    let encoder = load(&tiny_dir(), Backend::Native);
    assert!(matches!(encoder.embed(&[]), Err(Error::InvalidInput(_))));
}

#[test]
fn concurrent_callers_get_their_own_results() {
    let encoder = load(&tiny_dir(), Backend::Native);
    let texts = sentences();
    let expected = encoder.embed(&texts[..16]).unwrap();
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let (encoder, texts, expected) = (&encoder, &texts, &expected);
            scope.spawn(move || {
                for round in 0..5 {
                    let i = (worker * 5 + round) % 16;
                    let got = encoder.embed(&[texts[i]]).unwrap();
                    assert!(cosine(got.row(0), expected.row(i)) > 0.99999);
                }
            });
        }
    });
}

/// Records how many texts are done and cancels once any are.
struct CancelAfterFirst(AtomicUsize);

impl EncodeListener for CancelAfterFirst {
    fn on_progress(&self, done: usize, _total: usize) {
        self.0.store(done, Ordering::SeqCst);
    }
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

#[test]
fn progress_is_reported_and_cancellation_stops_between_batches() {
    let encoder = OnnxEncoder::load(&tiny_dir(), &EncoderOptions { max_batch: 4, ..Default::default() }).unwrap();
    let texts = sentences();
    let listener = CancelAfterFirst(AtomicUsize::new(0));
    assert!(matches!(encoder.embed_with(&texts[..20], &listener), Err(Error::Cancelled)));
    assert_eq!(listener.0.load(Ordering::SeqCst), 4, "one batch ran, then it stopped");
}

#[test]
fn missing_model_directory_is_a_manifest_error() {
    let error = OnnxEncoder::load(Path::new("/nonexistent/model"), &EncoderOptions::default()).unwrap_err();
    assert!(matches!(error, Error::Manifest { .. }), "{error}");
    assert!(error.to_string().contains("models/fetch"), "{error}");
}

#[test]
fn corrupt_onnx_of_the_right_size_is_a_load_error() {
    let dir = tracked_copy("corrupt-onnx");
    let mut bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    bytes[..256].iter_mut().for_each(|b| *b = 0xff);
    std::fs::write(dir.join("model.onnx"), bytes).unwrap();
    for backend in backends() {
        let error = OnnxEncoder::load(&dir, &EncoderOptions { backend, ..Default::default() }).unwrap_err();
        assert!(matches!(error, Error::ModelLoad { .. }), "{backend}: {error}");
    }
}

#[test]
fn tokenizer_larger_than_the_model_vocabulary_is_a_mismatch() {
    let dir = tracked_copy("big-vocab");
    let path = dir.join("tokenizer.json");
    let mut tokenizer: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tokenizer["model"]["vocab"]["zzzbeyondthetable"] = serde_json::json!(50_000);
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    for backend in backends() {
        let error = OnnxEncoder::load(&dir, &EncoderOptions { backend, ..Default::default() }).unwrap_err();
        assert!(matches!(error, Error::ModelMismatch(_)), "{backend}: {error}");
        if backend == Backend::Native {
            assert!(error.to_string().contains("rows"), "found statically, without running: {error}");
        }
    }
}

#[test]
fn manifest_that_disagrees_with_the_model_is_a_mismatch() {
    let cases: [(&str, &str, &str); 3] = [
        ("\"dim\": 32", "\"dim\": 31", "width"),
        ("\"token_type_ids\": \"token_type_ids\"", "\"token_type_ids\": null", "token_type_ids"),
        ("\"output\": \"last_hidden_state\"", "\"output\": \"pooler_output\"", "pooler_output"),
    ];
    for (from, to, mentioned) in cases {
        let dir = tracked_copy("manifest-mismatch");
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        for backend in backends() {
            let error = OnnxEncoder::load(&dir, &EncoderOptions { backend, ..Default::default() }).unwrap_err();
            assert!(matches!(error, Error::ModelMismatch(_)), "{backend} {to}: {error}");
            assert!(error.to_string().contains(mentioned), "{backend}: {error} should mention {mentioned}");
        }
    }
}

#[test]
fn unavailable_ort_library_is_a_typed_error() {
    if !cfg!(feature = "ort") {
        let error = OnnxEncoder::load(&tiny_dir(), &EncoderOptions { backend: Backend::Ort, ..Default::default() })
            .unwrap_err();
        assert!(matches!(error, Error::BackendUnavailable { .. }), "{error}");
        return;
    }
    let options = EncoderOptions {
        backend: Backend::Ort,
        ort_library: Some("/nonexistent/libonnxruntime.so".into()),
        ..Default::default()
    };
    let error = OnnxEncoder::load(&tiny_dir(), &options).unwrap_err();
    assert!(matches!(error, Error::BackendUnavailable { .. }), "{error}");
}
