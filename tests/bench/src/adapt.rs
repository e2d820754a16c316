//! `attune-bench adapt`: adaptation as apps get it, through
//! `Personalizer::train` on a fresh file per sample: one file trains with
//! adaptation off, the other with the automatic choice (or forced), and
//! both are scored with `evaluate` on CLINC150's test set — so the adapted
//! column includes the held-out split, the choice, storing the head and
//! predicting through its layers. Also measures prediction latency, the
//! bytes of an adapted head and the trunk-state cache per example.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use attune::{
    AdaptChoice, AdaptOptions, Encoder, Error, NewExample, Personalizer, QuietTraining, TrainOptions, TrainOutcome,
};

use crate::Cli;
use crate::heads::{Clinc, Split, mean, sample_k};

#[derive(Debug, clap::Args)]
pub struct AdaptBenchArgs {
    /// CLINC150's data_full.json.
    #[arg(long)]
    data: PathBuf,
    /// Examples per intent.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    shots: Vec<usize>,
    /// Samples (and training seeds) per setting.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// The adapted column's choice: the automatic one, or adaptation forced.
    #[arg(long, value_enum, default_value = "auto")]
    choice: Choice,
    /// Top layers adapted.
    #[arg(long, default_value_t = TrainOptions::default().adapt_layers)]
    layers: usize,
    #[arg(long, default_value_t = AdaptOptions::default().steps)]
    steps: usize,
    #[arg(long, default_value_t = AdaptOptions::default().learning_rate)]
    learning_rate: f32,
    #[arg(long, default_value_t = AdaptOptions::default().temperature)]
    temperature: f32,
    #[arg(long, default_value_t = AdaptOptions::default().labels_per_batch)]
    labels_per_batch: usize,
    #[arg(long, default_value_t = AdaptOptions::default().examples_per_label)]
    examples_per_label: usize,
    /// Low-rank adaptation of this rank instead of every weight.
    #[arg(long)]
    rank: Option<usize>,
}

/// Which `AdaptChoice` the adapted column trains with.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Choice {
    Auto,
    Always,
}

impl AdaptBenchArgs {
    /// Training options of the adapted column (the frozen one turns adaptation off).
    fn options(&self) -> TrainOptions {
        let adapt = match self.choice {
            Choice::Auto => AdaptChoice::Auto,
            Choice::Always => AdaptChoice::Always,
        };
        let adaptation = AdaptOptions {
            steps: self.steps,
            learning_rate: self.learning_rate,
            temperature: self.temperature,
            labels_per_batch: self.labels_per_batch,
            examples_per_label: self.examples_per_label,
            rank: self.rank,
            ..AdaptOptions::default()
        };
        TrainOptions { adapt, adapt_layers: self.layers, adaptation, ..TrainOptions::default() }
    }
}

pub fn run(cli: &Cli, args: &AdaptBenchArgs) -> Result<(), Error> {
    let encoder: Arc<dyn Encoder> = Arc::new(cli.load_encoder()?);
    let document = compare(encoder, args)?;
    println!("{}", serde_json::to_string_pretty(&document).map_err(|e| Error::Storage(e.to_string()))?);
    Ok(())
}

/// One method's result on one sample.
struct Scored {
    accuracy: f64,
    train_s: f64,
    adapted: bool,
    /// Held-out (accuracy, log loss) of linear heads on the frozen and on
    /// the adapted features, on which the automatic choice decided.
    held_out: Option<((f64, f64), (f64, f64))>,
    head_bytes: usize,
    /// Milliseconds per sentence, one at a time and in batches of 64.
    batch_1_ms: f64,
    batched_ms: f64,
    cache_bytes_per_example: f64,
}

/// Frozen against adapted, sample by sample.
fn compare(encoder: Arc<dyn Encoder>, args: &AdaptBenchArgs) -> Result<serde_json::Value, Error> {
    let (clinc, intents) = Clinc::load(&args.data)?;
    let label_of = |l: &str| intents.binary_search_by(|i| i.as_str().cmp(l)).expect("a training intent");
    let train_split = Split {
        rows: (0..clinc.train.len()).collect(),
        labels: clinc.train.iter().map(|(_, l)| label_of(l)).collect(),
    };
    let scratch = std::env::temp_dir().join(format!("attune-bench-adapt-{}", std::process::id()));
    let mut results = Vec::new();
    let adapting = args.options();
    for &k in &args.shots {
        let (mut frozen, mut adapted) = (Vec::new(), Vec::new());
        for seed in 0..args.seeds {
            let sample: Vec<&(String, String)> =
                sample_k(&train_split, intents.len(), k, seed).into_iter().map(|i| &clinc.train[i]).collect();
            let score = |options: &TrainOptions, tag: &str| -> Result<Scored, Error> {
                let dir = scratch.join(format!("{tag}-{k}-{seed}"));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).map_err(|e| Error::Storage(e.to_string()))?;
                let p = Personalizer::open_with_encoder(&dir.join("user.db"), None, encoder.clone())?;
                let scored = train_and_score(&p, &sample, &intents, &clinc.test, options, seed);
                drop(p);
                let _ = std::fs::remove_dir_all(&dir);
                scored
            };
            let f = score(&TrainOptions { adapt: AdaptChoice::Never, ..adapting.clone() }, "frozen")?;
            let a = score(&adapting, "adapted")?;
            let judged = a.held_out.map_or(String::new(), |((frozen, frozen_loss), (adapted, adapted_loss))| {
                format!(
                    ", held out: frozen {frozen:.4} (log loss {frozen_loss:.4}), adapted {adapted:.4} \
                     (log loss {adapted_loss:.4})"
                )
            });
            eprintln!(
                "k={k} seed {seed}: frozen {:.4} ({:.1} s), {} {:.4} ({:.1} s){judged}",
                f.accuracy,
                f.train_s,
                if a.adapted { "adapted" } else { "declined" },
                a.accuracy,
                a.train_s
            );
            frozen.push(f);
            adapted.push(a);
        }
        results.push(serde_json::json!({
            "setting": format!("k={k}"),
            "frozen": summary(&frozen),
            "adapted": summary(&adapted),
        }));
    }
    Ok(serde_json::json!({ "through_train": true, "choice": format!("{:?}", adapting.adapt), "results": results }))
}

fn train_and_score(
    p: &Personalizer,
    sample: &[&(String, String)],
    intents: &[String],
    test: &[(String, String)],
    options: &TrainOptions,
    seed: u64,
) -> Result<Scored, Error> {
    const TASK: &str = "clinc";
    for intent in intents {
        p.describe_label(TASK, intent, &intent.replace('_', " "))?;
    }
    let examples: Vec<NewExample> = sample.iter().map(|(text, label)| NewExample::new(text.clone(), label)).collect();
    p.add_examples(TASK, &examples)?;
    let started = Instant::now();
    let outcome: TrainOutcome = p.train(TASK, &TrainOptions { seed, ..options.clone() }, &QuietTraining)?;
    let train_s = started.elapsed().as_secs_f64();
    // A first head has nothing to be compared with: it is active.
    let metrics = p.evaluate(TASK, test)?;
    let texts: Vec<&str> = test.iter().take(64).map(|(t, _)| t.as_str()).collect();
    let started = Instant::now();
    for text in &texts {
        p.predict(TASK, &[text], 1)?;
    }
    let batch_1_ms = started.elapsed().as_secs_f64() * 1e3 / texts.len() as f64;
    let started = Instant::now();
    p.predict(TASK, &texts, 1)?;
    let batched_ms = started.elapsed().as_secs_f64() * 1e3 / texts.len() as f64;
    let head_bytes =
        p.heads(TASK)?.iter().find(|h| h.version == outcome.version).map_or(0, |h| h.weight_bytes as usize);
    let stats = p.stats(TASK)?;
    Ok(Scored {
        accuracy: metrics.accuracy,
        train_s,
        adapted: outcome.report.adaptation.as_ref().is_some_and(|a| a.adapted),
        held_out: outcome
            .report
            .adaptation
            .as_ref()
            .and_then(|a| Some(((a.frozen_accuracy?, a.frozen_log_loss?), (a.adapted_accuracy?, a.adapted_log_loss?)))),
        head_bytes,
        batch_1_ms,
        batched_ms,
        cache_bytes_per_example: stats.trunk_state_bytes as f64 / stats.trunk_states.max(1) as f64,
    })
}

fn summary(runs: &[Scored]) -> serde_json::Value {
    let column = |f: &dyn Fn(&Scored) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    serde_json::json!({
        "accuracy": mean(&column(&|r| r.accuracy)),
        "per_seed": column(&|r| r.accuracy),
        "train_s": mean(&column(&|r| r.train_s)),
        "adapted_runs": runs.iter().filter(|r| r.adapted).count(),
        "head_bytes": mean(&column(&|r| r.head_bytes as f64)),
        "predict_batch_1_ms": mean(&column(&|r| r.batch_1_ms)),
        "predict_batched_ms": mean(&column(&|r| r.batched_ms)),
        "trunk_cache_bytes_per_example": mean(&column(&|r| r.cache_bytes_per_example)),
    })
}
