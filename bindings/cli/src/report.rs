//! `attune report [--out DIR]`: one HTML page per task with SVG charts — how
//! accuracy grows with examples per label, the confusion matrix and
//! reliability diagram on held-out examples, per-label metrics, data volume
//! and the task's head history — and an index page.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use attune::{
    Error, Metrics, Personalizer, QuietTraining, TaskInfo, TrainOptions, TrainingSet, evaluate, zero_shot_head,
};

use crate::Cli;
use crate::svg::{self, escape};

/// Every `HOLDOUT_EVERY`-th example of a label (in the order they were
/// added) is held out; the rest are what the curve's heads learn from.
const HOLDOUT_EVERY: usize = 4;
const RELIABILITY_BINS: usize = 10;

pub fn run(cli: &Cli, out: Option<&Path>) -> Result<(), Error> {
    let p = crate::data::open(cli)?;
    let out = out.map_or_else(|| PathBuf::from("attune-report"), Path::to_path_buf);
    let io = |e: std::io::Error| Error::Storage(format!("{}: {e}", out.display()));
    std::fs::create_dir_all(&out).map_err(io)?;
    let mut index = String::new();
    for info in p.tasks()? {
        let file = format!("task-{}.html", slug(&info.name));
        std::fs::write(out.join(&file), task_page(&p, &info)?).map_err(io)?;
        let _ = write!(
            index,
            "<tr><td><a href=\"{file}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&info.name),
            info.examples,
            info.labels,
            info.documents,
            info.feedback
        );
    }
    let body = format!(
        "<h1>Attune report</h1><p>Model <code>{}</code>. Everything here was computed on this device from its own database.</p>\
         <table><tr><th>task</th><th>examples</th><th>labels</th><th>documents</th><th>feedback</th></tr>{index}</table>",
        escape(p.encoder().model_id())
    );
    std::fs::write(out.join("index.html"), page("Attune report", &body)).map_err(io)?;
    if cli.json {
        println!("{}", serde_json::json!({ "index": out.join("index.html") }));
    } else {
        println!("report written to {}", out.join("index.html").display());
    }
    Ok(())
}

fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border-bottom:1px solid #ddd;padding:3px 10px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}figure{{display:inline-block;margin:1em 2em 1em 0;vertical-align:top}}\
         figcaption{{font-weight:bold;margin-bottom:.4em}}.note{{color:#666;max-width:60em}}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

fn figure(caption: &str, svg: String) -> String {
    format!("<figure><figcaption>{}</figcaption>{svg}</figure>", escape(caption))
}

/// A task's examples with their vectors, split for evaluation.
struct TaskData {
    labels: Vec<String>,
    /// Per example: its label index and its vector.
    rows: Vec<(usize, Vec<f32>)>,
    train: Vec<usize>,
    holdout: Vec<usize>,
    /// Per label, its description's vector when it has one.
    priors: Vec<Option<Vec<f32>>>,
}

fn load(p: &Personalizer, task: &str) -> Result<TaskData, Error> {
    let stored = p.task_vectors(task)?;
    let mut labels: Vec<String> = stored.examples.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let rows: Vec<(usize, Vec<f32>)> = stored
        .examples
        .iter()
        .zip(stored.example_vectors.chunks_exact(stored.dim))
        .map(|(example, vector)| (labels.binary_search(&example.label).unwrap_or(0), vector.to_vec()))
        .collect();
    let mut priors = vec![None; labels.len()];
    for ((label, _), vector) in stored.descriptions.iter().zip(stored.description_vectors.chunks_exact(stored.dim)) {
        if let Ok(i) = labels.binary_search(label) {
            priors[i] = Some(vector.to_vec());
        }
    }
    let (mut train, mut holdout) = (Vec::new(), Vec::new());
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, (label, _)) in rows.iter().enumerate() {
        let k = seen.entry(*label).or_default();
        if *k % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 {
            holdout.push(i)
        } else {
            train.push(i)
        }
        *k += 1;
    }
    Ok(TaskData { labels, rows, train, holdout, priors })
}

/// Accuracy and macro-F1 on the holdout of heads trained on the first
/// `n` training examples of every label, for growing `n`; and the metrics
/// and held-out probabilities of the last (all examples) one.
struct Curve {
    points: Vec<(usize, f64, f64)>,
    zero_shot: Option<(f64, f64)>,
    last: Option<(Metrics, Vec<f32>)>,
}

fn learning_curve(p: &Personalizer, data: &TaskData) -> Result<Curve, Error> {
    let encoder = p.encoder();
    let dim = encoder.dim();
    let holdout: Vec<f32> = data.holdout.iter().flat_map(|&i| data.rows[i].1.iter().copied()).collect();
    let truth: Vec<usize> = data.holdout.iter().map(|&i| data.rows[i].0).collect();
    let most = (0..data.labels.len())
        .map(|label| data.train.iter().filter(|&&i| data.rows[i].0 == label).count())
        .max()
        .unwrap_or(0);
    let mut sizes: Vec<usize> =
        std::iter::successors(Some(1usize), |n| Some(n * 2)).take_while(|&n| n < most).collect();
    sizes.push(most);
    let mut curve = Curve { points: Vec::new(), zero_shot: None, last: None };
    for &n in &sizes {
        let mut taken = vec![0usize; data.labels.len()];
        let chosen: Vec<usize> = data
            .train
            .iter()
            .copied()
            .filter(|&i| {
                let label = data.rows[i].0;
                taken[label] += 1;
                taken[label] <= n
            })
            .collect();
        let features: Vec<f32> = chosen.iter().flat_map(|&i| data.rows[i].1.iter().copied()).collect();
        let labels: Vec<usize> = chosen.iter().map(|&i| data.rows[i].0).collect();
        let set = TrainingSet {
            features: &features,
            dim,
            labels: &labels,
            weights: None,
            label_names: &data.labels,
            priors: &data.priors,
            fingerprint: encoder.fingerprint(),
        };
        let (head, _) = attune::train(&set, None, &TrainOptions::default(), &QuietTraining)?;
        let probabilities = head.probabilities(&holdout)?;
        let metrics = evaluate(&probabilities, &truth, &data.labels);
        curve.points.push((n, metrics.accuracy, metrics.macro_f1));
        curve.last = Some((metrics, probabilities));
    }
    let described: Vec<(usize, &Vec<f32>)> =
        data.priors.iter().enumerate().filter_map(|(i, v)| v.as_ref().map(|v| (i, v))).collect();
    if !described.is_empty() {
        let names: Vec<String> = described.iter().map(|(i, _)| data.labels[*i].clone()).collect();
        let vectors: Vec<f32> = described.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let head = zero_shot_head(encoder.fingerprint(), names.clone(), &vectors, dim)?;
        // Labels without a description cannot be predicted: they count as errors.
        let truth: Vec<usize> =
            truth.iter().map(|t| described.iter().position(|(i, _)| i == t).unwrap_or(usize::MAX)).collect();
        let metrics = evaluate(&head.probabilities(&holdout)?, &truth, &names);
        curve.zero_shot = Some((metrics.accuracy, metrics.macro_f1));
    }
    Ok(curve)
}

fn task_page(p: &Personalizer, info: &TaskInfo) -> Result<String, Error> {
    let mut body = format!(
        "<p><a href=\"index.html\">all tasks</a></p><h1>Task {}</h1>\
         <p>{} examples in {} labels, {} documents, {} feedback events; active head: {}.</p>",
        escape(&info.name),
        info.examples,
        info.labels,
        info.documents,
        info.feedback,
        info.active_head_version.map_or("none".to_string(), |v| format!("version {v}"))
    );
    let data = load(p, &info.name)?;
    let counts: Vec<(String, f64)> = data
        .labels
        .iter()
        .enumerate()
        .map(|(label, name)| (name.clone(), data.rows.iter().filter(|r| r.0 == label).count() as f64))
        .collect();
    if !counts.is_empty() {
        body += &figure("Examples per label", svg::bars("examples per label", &counts, ""));
    }
    if data.labels.len() >= 2 && !data.holdout.is_empty() {
        body += &evaluation_section(p, &data)?;
    } else {
        body += "<p class=\"note\">Too few labelled examples to evaluate: at least two labels and four examples of \
                 one label are needed.</p>";
    }
    body += &heads_section(p, &info.name)?;
    Ok(page(&format!("Attune: {}", info.name), &body))
}

fn evaluation_section(p: &Personalizer, data: &TaskData) -> Result<String, Error> {
    let curve = learning_curve(p, data)?;
    let mut out = format!(
        "<h2>How the task learns</h2><p class=\"note\">Every {HOLDOUT_EVERY}th example of each label ({} in all) is \
         held out; heads are trained, as <code>attune train</code> trains them, on the first n remaining examples \
         of every label and scored on the held-out ones. This describes the task and its data, not exactly the \
         active head, which learned from all examples.</p>",
        data.holdout.len()
    );
    let most = curve.points.last().map_or(1, |p| p.0).max(1) as f64;
    let offset = if curve.zero_shot.is_some() { 1.0 } else { 0.0 };
    let x = |n: usize| {
        if most <= 1.0 && offset == 0.0 { 1.0 } else { ((n as f64).log2() + offset) / (most.log2() + offset) }
    };
    let mut ticks: Vec<(f64, String)> = curve.points.iter().map(|(n, _, _)| (x(*n), n.to_string())).collect();
    let mut accuracy: Vec<(f64, f64)> = curve.points.iter().map(|(n, a, _)| (x(*n), *a)).collect();
    let mut macro_f1: Vec<(f64, f64)> = curve.points.iter().map(|(n, _, f)| (x(*n), *f)).collect();
    if let Some((a, f)) = curve.zero_shot {
        ticks.insert(0, (0.0, "0 (descriptions)".into()));
        accuracy.insert(0, (0.0, a));
        macro_f1.insert(0, (0.0, f));
    }
    out += &figure(
        "Learning curve",
        svg::line_chart(
            "learning curve",
            &ticks,
            &[
                svg::Series { name: "accuracy", colour: "#4c78a8", points: accuracy },
                svg::Series { name: "macro-F1", colour: "#f58518", points: macro_f1 },
            ],
            "examples per label",
        ),
    );
    let Some((metrics, probabilities)) = curve.last else { return Ok(out) };
    let k = data.labels.len();
    let truth: Vec<usize> = data.holdout.iter().map(|&i| data.rows[i].0).collect();
    let mut confusion = vec![vec![0u64; k]; k];
    let mut bins = vec![(0.0f64, 0u64, 0u64); RELIABILITY_BINS];
    for (row, &t) in probabilities.chunks_exact(k).zip(&truth) {
        let (best, confidence) =
            row.iter().enumerate().fold((0, f32::MIN), |acc, (j, &v)| if v > acc.1 { (j, v) } else { acc });
        confusion[t][best] += 1;
        let bin = ((confidence as f64 * RELIABILITY_BINS as f64) as usize).min(RELIABILITY_BINS - 1);
        bins[bin].0 += confidence as f64;
        bins[bin].1 += u64::from(best == t);
        bins[bin].2 += 1;
    }
    let bins: Vec<(f64, f64, u64)> = bins
        .into_iter()
        .map(|(sum, right, n)| if n == 0 { (0.0, 0.0, 0) } else { (sum / n as f64, right as f64 / n as f64, n) })
        .collect();
    let _ = write!(
        out,
        "<h2>On the held-out examples, with all training examples</h2><p>accuracy {:.3}, macro-F1 {:.3}, \
         log loss {:.3}, expected calibration error {:.3} ({} examples)</p>",
        metrics.accuracy, metrics.macro_f1, metrics.log_loss, metrics.ece, metrics.n
    );
    out += &figure(
        "Confusion matrix (rows: true label, columns: predicted)",
        svg::confusion("confusion matrix", &data.labels, &confusion),
    );
    out += &figure("Reliability diagram (dashed: perfect calibration)", svg::reliability("reliability diagram", &bins));
    out +=
        "<h3>Per label</h3><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>held out</th></tr>";
    for class in &metrics.per_class {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            escape(&class.label),
            class.precision,
            class.recall,
            class.f1,
            class.support
        );
    }
    out += "</table>";
    Ok(out)
}

fn heads_section(p: &Personalizer, task: &str) -> Result<String, Error> {
    let heads = p.heads(task)?;
    if heads.is_empty() {
        return Ok("<h2>Heads</h2><p>None trained yet.</p>".into());
    }
    let mut out = "<h2>Heads</h2><table><tr><th>version</th><th>kind</th><th>validation accuracy</th>\
                   <th>state</th></tr>"
        .to_string();
    for head in heads {
        let accuracy = head.validation.map_or("—".to_string(), |m| format!("{:.3}", m.accuracy));
        let state = match (head.active, head.stale) {
            (true, _) => "active",
            (_, true) => "erased (trained on forgotten data)",
            _ => "kept",
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{accuracy}</td><td>{state}</td></tr>",
            head.version,
            head.kind.name()
        );
    }
    Ok(out + "</table>")
}
