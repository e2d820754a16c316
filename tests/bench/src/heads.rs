//! `attune-bench heads`: head training on CLINC150 (Larson et al. 2019),
//! embedded once with the real encoder through the store's feature cache.
//! Also writes the vectors for `tests/bench/train_peer.py`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use attune::{
    Encoder, Error, HeadChoice, HeadKind, QuietTraining, Store, StoreOptions, TrainOptions, TrainingSet,
    VectorEncoding, evaluate, train, zero_shot_head,
};
use serde::Deserialize;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct HeadsBenchArgs {
    /// CLINC150's data_full.json.
    #[arg(long)]
    data: PathBuf,
    /// Where the feature cache and the exported vectors go.
    #[arg(long, default_value = "target/bench-clinc")]
    cache: PathBuf,
    /// Examples per intent in the few-shot runs.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    shots: Vec<usize>,
    /// Seeds per setting: training seeds on the full set, samples and
    /// training seeds in the few-shot runs.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Heads to compare (auto, linear, mlp, prototype).
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    heads: Vec<String>,
    /// Fixed epochs instead of the automatic choice (for experiments).
    #[arg(long)]
    epochs: Option<usize>,
    /// Fixed weight decay instead of the validated grid (for experiments).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Label smoothing (for experiments).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Hidden units of the MLP head (for experiments).
    #[arg(long)]
    mlp_hidden: Option<usize>,
    /// Mini-batch size instead of the automatic one (for experiments).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Only the full-data run.
    #[arg(long)]
    full_only: bool,
}

#[derive(Deserialize)]
pub(crate) struct Clinc {
    pub train: Vec<(String, String)>,
    pub val: Vec<(String, String)>,
    pub test: Vec<(String, String)>,
    pub oos_test: Vec<(String, String)>,
}

pub(crate) struct Split {
    pub rows: Vec<usize>,
    pub labels: Vec<usize>,
}

impl Clinc {
    /// Reads `data_full.json`; also returns the sorted intent names.
    pub fn load(path: &std::path::Path) -> Result<(Self, Vec<String>), Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidInput(format!("{}: {e} (--data names CLINC150's data_full.json)", path.display()))
        })?;
        let clinc: Clinc = serde_json::from_str(&text).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let mut intents: Vec<String> = clinc.train.iter().map(|(_, l)| l.clone()).collect();
        intents.sort();
        intents.dedup();
        Ok((clinc, intents))
    }
}

pub fn run(cli: &Cli, args: &HeadsBenchArgs) -> Result<(), Error> {
    let (clinc, intents) = Clinc::load(&args.data)?;
    let index = |label: &str| intents.binary_search_by(|l| l.as_str().cmp(label)).ok();

    let all: Vec<&str> = [&clinc.train, &clinc.val, &clinc.test, &clinc.oos_test]
        .iter()
        .flat_map(|split| split.iter().map(|(t, _)| t.as_str()))
        .collect();
    let started = Instant::now();
    let encoder = cli.load_encoder()?;
    let features = embed_cached(&encoder, &args.cache, &all)?;
    let embed_s = started.elapsed().as_secs_f64();
    let dim = encoder.dim();
    let mut offset = 0;
    let mut split = |items: &[(String, String)]| {
        let rows: Vec<usize> = (offset..offset + items.len()).collect();
        offset += items.len();
        let labels = items.iter().map(|(_, l)| index(l).unwrap_or(usize::MAX)).collect();
        Split { rows, labels }
    };
    let (train_split, val_split, test_split, oos_split) =
        (split(&clinc.train), split(&clinc.val), split(&clinc.test), split(&clinc.oos_test));
    export_for_peer(&args.cache, &features, dim, &intents, [&train_split, &val_split, &test_split, &oos_split])?;
    let rows_of =
        |rows: &[usize]| -> Vec<f32> { rows.iter().flat_map(|&r| features[r * dim..(r + 1) * dim].to_vec()).collect() };
    let test_x = rows_of(&test_split.rows);
    let oos_x = rows_of(&oos_split.rows);

    // Zero-shot: each intent's name as its description.
    let descriptions: Vec<String> = intents.iter().map(|i| i.replace('_', " ")).collect();
    let refs: Vec<&str> = descriptions.iter().map(String::as_str).collect();
    let description_vectors = encoder.embed(&refs)?;
    let zero = zero_shot_head(encoder.fingerprint(), intents.clone(), description_vectors.as_slice(), dim)?;
    let zero_metrics = evaluate(&zero.probabilities(&test_x)?, &test_split.labels, &intents);
    let priors: Vec<Option<Vec<f32>>> = description_vectors.rows().map(|r| Some(r.to_vec())).collect();

    let mut results = Vec::new();
    for head in &args.heads {
        let choice = match head.as_str() {
            "auto" => HeadChoice::Auto,
            other => HeadChoice::Only(HeadKind::from_name(other)?),
        };
        let options = TrainOptions {
            head: choice,
            epochs: args.epochs,
            weight_decay: args.weight_decay,
            label_smoothing: args.label_smoothing,
            batch_size: args.batch_size,
            mlp_hidden: args.mlp_hidden.unwrap_or(TrainOptions::default().mlp_hidden),
            ..TrainOptions::default()
        };
        // Full training split.
        let set_x = rows_of(&train_split.rows);
        let set = TrainingSet {
            features: &set_x,
            dim,
            labels: &train_split.labels,
            weights: None,
            label_names: &intents,
            priors: &priors,
            fingerprint: encoder.fingerprint(),
        };
        // Seed 0's head is the one described in detail (choice, candidates,
        // out of scope); the others show how much the seed moves accuracy.
        let mut runs = Vec::new();
        for seed in 0..args.seeds.max(1) {
            let (trained, report) = train(&set, None, &TrainOptions { seed, ..options.clone() }, &QuietTraining)?;
            let metrics = evaluate(&trained.probabilities(&test_x)?, &test_split.labels, &intents);
            runs.push((trained, report, metrics));
        }
        let (first, first_report, first_metrics) = &runs[0];
        let oos = out_of_scope(first, &test_x, &test_split.labels, &oos_x, dim)?;
        let per_seed = |f: &dyn Fn(&attune::Metrics) -> f64| runs.iter().map(|(_, _, m)| f(m)).collect::<Vec<f64>>();
        let accuracy = per_seed(&|m| m.accuracy);
        results.push(serde_json::json!({
            "head": head, "setting": "full", "chosen": first_report.chosen.to_string(), "accuracy": mean(&accuracy),
            "accuracy_per_seed": accuracy, "macro_f1": mean(&per_seed(&|m| m.macro_f1)), "ece": first_metrics.ece,
            "train_ms": mean(&runs.iter().map(|(_, r, _)| r.train_ms as f64).collect::<Vec<_>>()),
            "chosen_per_seed": runs.iter().map(|(_, r, _)| r.chosen.to_string()).collect::<Vec<_>>(),
            "validation": first_report.validation_method.to_string(), "candidates": first_report.candidates, "out_of_scope": oos,
        }));
        let shots: &[usize] = if args.full_only { &[] } else { &args.shots };
        for &k in shots {
            let mut accuracy = Vec::new();
            let mut macro_f1 = Vec::new();
            let mut train_ms = Vec::new();
            for seed in 0..args.seeds {
                let rows = sample_k(&train_split, intents.len(), k, seed);
                let x = rows_of(&rows.iter().map(|&i| train_split.rows[i]).collect::<Vec<_>>());
                let labels: Vec<usize> = rows.iter().map(|&i| train_split.labels[i]).collect();
                let set = TrainingSet { features: &x, labels: &labels, ..set };
                let options = TrainOptions { seed, ..options.clone() };
                let (trained, report) = train(&set, None, &options, &QuietTraining)?;
                let m = evaluate(&trained.probabilities(&test_x)?, &test_split.labels, &intents);
                accuracy.push(m.accuracy);
                macro_f1.push(m.macro_f1);
                train_ms.push(report.train_ms as f64);
            }
            results.push(serde_json::json!({
                "head": head, "setting": format!("k={k}"), "accuracy": mean(&accuracy), "accuracy_per_seed": accuracy,
                "macro_f1": mean(&macro_f1), "train_ms": mean(&train_ms),
            }));
        }
    }
    let document = serde_json::json!({
        "model": encoder.manifest().id, "backend": encoder.backend().to_string(), "embed_s": embed_s,
        "zero_shot": {"accuracy": zero_metrics.accuracy, "macro_f1": zero_metrics.macro_f1},
        "results": results,
    });
    if cli.json {
        println!("{document}");
    } else {
        println!("{}", serde_json::to_string_pretty(&document).map_err(|e| Error::Storage(e.to_string()))?);
    }
    Ok(())
}

/// In-scope accuracy (answered and right) and out-of-scope recall
/// (abstained), using the head's own abstain decision, as an app sees it.
fn out_of_scope(
    head: &attune::Head,
    test_x: &[f32],
    truth: &[usize],
    oos_x: &[f32],
    dim: usize,
) -> Result<serde_json::Value, Error> {
    let mut answered_right = 0usize;
    for (row, &y) in test_x.chunks_exact(dim).zip(truth) {
        let prediction = head.predict(row, 1)?;
        answered_right += usize::from(!prediction.abstain && prediction.top[0].label == head.labels()[y]);
    }
    let mut rejected = 0usize;
    for row in oos_x.chunks_exact(dim) {
        rejected += usize::from(head.predict(row, 1)?.abstain);
    }
    Ok(serde_json::json!({
        "probability_threshold": head.abstain_threshold(),
        "in_scope_accuracy": answered_right as f64 / truth.len() as f64,
        "out_of_scope_recall": rejected as f64 / (oos_x.len() / dim) as f64,
    }))
}

pub(crate) fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// `k` examples per intent, drawn reproducibly with `seed`.
pub(crate) fn sample_k(split: &Split, classes: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &label) in split.labels.iter().enumerate() {
        by_class[label].push(i);
    }
    let mut rng = crate::test_rng::XorShift::seeded(seed);
    let mut picked = Vec::new();
    for mut members in by_class {
        for i in (1..members.len()).rev() {
            members.swap(i, rng.below(i + 1));
        }
        picked.extend(members.into_iter().take(k));
    }
    picked
}

/// Embeds `texts`, reusing vectors already in the bench's feature cache.
fn embed_cached(encoder: &attune::OnnxEncoder, cache: &std::path::Path, texts: &[&str]) -> Result<Vec<f32>, Error> {
    std::fs::create_dir_all(cache).map_err(|e| Error::Storage(e.to_string()))?;
    let store = Store::open(&cache.join("features.db"), &StoreOptions::default())?;
    let cached = store.cached_features(encoder.fingerprint(), texts)?;
    let missing: Vec<&str> = texts.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(t, _)| *t).collect();
    let mut fresh = BTreeMap::new();
    for chunk in missing.chunks(1024) {
        let vectors = encoder.embed(chunk)?;
        let entries: Vec<(&str, &[f32])> = chunk.iter().copied().zip(vectors.rows()).collect();
        store.cache_features(encoder.fingerprint(), &entries, VectorEncoding::F32)?;
        for (text, row) in entries {
            fresh.insert(text.to_string(), row.to_vec());
        }
    }
    Ok(texts.iter().zip(cached).flat_map(|(text, hit)| hit.unwrap_or_else(|| fresh[*text].clone())).collect())
}

/// `features.f32` (row-major little-endian) and `index.json` for the peer.
fn export_for_peer(
    cache: &std::path::Path,
    features: &[f32],
    dim: usize,
    intents: &[String],
    splits: [&Split; 4],
) -> Result<(), Error> {
    let bytes: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(cache.join("features.f32"), bytes).map_err(|e| Error::Storage(e.to_string()))?;
    let names = ["train", "val", "test", "oos_test"];
    let index: serde_json::Map<_, _> = names
        .iter()
        .zip(splits)
        .map(|(name, split)| (name.to_string(), serde_json::json!({"rows": split.rows, "labels": split.labels})))
        .collect();
    let document = serde_json::json!({"dim": dim, "intents": intents, "splits": index});
    std::fs::write(cache.join("index.json"), document.to_string()).map_err(|e| Error::Storage(e.to_string()))
}
