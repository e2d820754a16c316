//! `attune bench adapt`: adapting the backbone's top layers on CLINC150's
//! few-shot samples (the same draws as `bench heads`), against the frozen
//! backbone with the same head training on the same rows. The frozen
//! vectors come through the same unmodified top layers, so the two columns
//! differ only in the adaptation.

use std::path::PathBuf;
use std::time::Instant;

use attune::internal::{AdaptedTop, TrunkStates};
use attune::{
    AdaptChoice, AdaptOptions, Encoder, Error, QuietTraining, SILENT, TrainOptions, TrainingSet, evaluate, train,
};

use crate::Cli;
use crate::bench_heads::{Clinc, Split, mean, sample_k};

#[derive(Debug, clap::Args)]
pub struct AdaptBenchArgs {
    /// CLINC150's data_full.json.
    #[arg(long, default_value = "../shared/datasets/clinc150/data_full.json")]
    data: PathBuf,
    /// Examples per intent.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    shots: Vec<usize>,
    /// Samples (and training seeds) per setting.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Top layers adapted.
    #[arg(long, default_value_t = 2)]
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
    /// Through `Personalizer::train` instead, with its defaults (the other
    /// adaptation settings do not apply): frozen against `--choice`.
    #[arg(long)]
    through_train: bool,
    /// With `--through-train`: `auto` (the automatic choice) or `always`.
    #[arg(long, default_value = "auto")]
    choice: String,
}

/// One sample's accuracy and training seconds, frozen and adapted.
struct Run {
    frozen_accuracy: f64,
    frozen_s: f64,
    adapted_accuracy: f64,
    adapted_s: f64,
}

pub fn run(cli: &Cli, args: &AdaptBenchArgs) -> Result<(), Error> {
    if args.through_train {
        let choice = match args.choice.as_str() {
            "auto" => AdaptChoice::Auto,
            "always" => AdaptChoice::Always,
            other => return Err(Error::InvalidInput(format!("--choice {other}: auto or always"))),
        };
        let encoder = std::sync::Arc::new(cli.load_encoder()?);
        let document = crate::bench_adapt_train::run(encoder, &args.data, &args.shots, args.seeds, choice)?;
        println!("{}", serde_json::to_string_pretty(&document).map_err(|e| Error::Storage(e.to_string()))?);
        return Ok(());
    }
    let (clinc, intents) = Clinc::load(&args.data)?;
    let label_of = |l: &str| intents.binary_search_by(|i| i.as_str().cmp(l)).expect("a training intent");
    let train_split = Split {
        rows: (0..clinc.train.len()).collect(),
        labels: clinc.train.iter().map(|(_, l)| label_of(l)).collect(),
    };
    let encoder = cli.load_encoder()?;
    let started = Instant::now();
    let frozen = AdaptedTop::of(&encoder, args.layers)?;
    let trunk = |texts: Vec<&str>| TrunkStates::compute(&encoder, args.layers, &texts, &SILENT);
    let test_states = trunk(clinc.test.iter().map(|(t, _)| t.as_str()).collect())?;
    let test_labels: Vec<usize> = clinc.test.iter().map(|(_, l)| label_of(l)).collect();
    let descriptions: Vec<String> = intents.iter().map(|i| i.replace('_', " ")).collect();
    let description_states = trunk(descriptions.iter().map(String::as_str).collect())?;
    let train_states = trunk(clinc.train.iter().map(|(t, _)| t.as_str()).collect())?;
    let trunk_s = started.elapsed().as_secs_f64();

    let options = AdaptOptions {
        steps: args.steps,
        learning_rate: args.learning_rate,
        temperature: args.temperature,
        labels_per_batch: args.labels_per_batch,
        examples_per_label: args.examples_per_label,
        rank: args.rank,
        ..AdaptOptions::default()
    };
    let dim = encoder.dim();
    let mut results = Vec::new();
    let mut stored_values = 0;
    for &k in &args.shots {
        let mut rows = Vec::new();
        for seed in 0..args.seeds {
            let sample = sample_k(&train_split, intents.len(), k, seed);
            let states = train_states.select(&sample);
            let labels: Vec<usize> = sample.iter().map(|&i| train_split.labels[i]).collect();
            let fit = |top: &AdaptedTop| -> Result<(f64, f64), Error> {
                let started = Instant::now();
                let x = top.embed(&states)?;
                let priors: Vec<Option<Vec<f32>>> =
                    top.embed(&description_states)?.chunks(dim).map(|r| Some(r.to_vec())).collect();
                let set = TrainingSet {
                    features: &x,
                    dim,
                    labels: &labels,
                    weights: None,
                    label_names: &intents,
                    priors: &priors,
                    fingerprint: encoder.fingerprint(),
                };
                let (head, _) = train(&set, None, &TrainOptions { seed, ..TrainOptions::default() }, &QuietTraining)?;
                let fit_s = started.elapsed().as_secs_f64();
                let metrics = evaluate(&head.probabilities(&top.embed(&test_states)?)?, &test_labels, &intents);
                Ok((metrics.accuracy, fit_s))
            };
            let (frozen_accuracy, frozen_s) = fit(&frozen)?;
            let started = Instant::now();
            let adapted = frozen.adapt(&states, &labels, &AdaptOptions { seed, ..options.clone() }, &|| false)?;
            let adapt_s = started.elapsed().as_secs_f64();
            let (adapted_accuracy, head_s) = fit(&adapted)?;
            eprintln!(
                "k={k} seed {seed}: frozen {frozen_accuracy:.4}, adapted {adapted_accuracy:.4} \
                 (adapt {adapt_s:.1} s, loss {:.3} -> {:.3})",
                adapted.first_loss, adapted.last_loss
            );
            rows.push(Run { frozen_accuracy, frozen_s, adapted_accuracy, adapted_s: adapt_s + head_s });
            stored_values = adapted.trained_values;
        }
        let column = |f: &dyn Fn(&Run) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
        results.push(serde_json::json!({
            "setting": format!("k={k}"),
            "frozen_accuracy": mean(&column(&|r| r.frozen_accuracy)), "frozen_train_s": mean(&column(&|r| r.frozen_s)),
            "adapted_accuracy": mean(&column(&|r| r.adapted_accuracy)),
            "adapted_train_s": mean(&column(&|r| r.adapted_s)),
            "frozen_per_seed": column(&|r| r.frozen_accuracy), "adapted_per_seed": column(&|r| r.adapted_accuracy),
        }));
    }
    let document = serde_json::json!({
        "model": encoder.manifest().id, "layers": args.layers, "trunk_states_s": trunk_s,
        "steps": args.steps, "learning_rate": args.learning_rate, "temperature": args.temperature,
        "rank": args.rank, "adapted_values_stored": stored_values,
        "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&document).map_err(|e| Error::Storage(e.to_string()))?);
    Ok(())
}
