//! A task's lifecycle through the `Personalizer` on an encoder of the
//! test's own (the seam apps use for a model of their own): train and
//! promote, forget a label, retrain from what remains, and never predict
//! the forgotten label again.

use std::sync::Arc;

use attune::{
    Embeddings, EncodeListener, Encoder, Forget, HeadChoice, HeadKind, NewExample, Personalizer, PredictionSource,
    QuietTraining, Retrain, TrainOptions,
};

const DIM: usize = 16;
const LABELS: [&str; 3] = ["bills", "family", "travel"];

/// Each label has a direction, each text `"<label> message <i>"` a
/// deterministic small deviation from it; other texts sit between them.
#[derive(Debug)]
struct LabelDirections;

impl LabelDirections {
    fn vector(text: &str) -> Vec<f32> {
        let words: Vec<&str> = text.split(' ').collect();
        let label = LABELS.iter().position(|l| words.first() == Some(l));
        let i: usize = words.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut v: Vec<f32> = (0..DIM)
            .map(|d| match label {
                Some(label) if d == label * 3 => 1.0,
                Some(_) => 0.0,
                None => 0.3,
            })
            .collect();
        let label = label.unwrap_or(0);
        for (d, x) in v.iter_mut().enumerate() {
            *x += 0.15 * (((i * 31 + d * 17 + label * 7) % 11) as f32 / 11.0 - 0.5);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }
}

impl Encoder for LabelDirections {
    fn dim(&self) -> usize {
        DIM
    }

    fn fingerprint(&self) -> &str {
        "label-directions"
    }

    fn embed_with(&self, texts: &[&str], _listener: &dyn EncodeListener) -> attune::Result<Embeddings> {
        Embeddings::from_values(DIM, texts.iter().flat_map(|t| Self::vector(t)).collect())
    }
}

fn examples() -> Vec<NewExample> {
    LABELS
        .iter()
        .flat_map(|label| (0..30).map(move |i| NewExample::new(format!("{label} message {i}"), *label)))
        .collect()
}

#[test]
fn a_trained_head_is_promoted_and_a_forgotten_label_is_never_predicted_again() {
    let dir = std::env::temp_dir().join(format!("attune-lifecycle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = Personalizer::open_with_encoder(&dir.join("user.db"), None, Arc::new(LabelDirections)).unwrap();
    p.add_examples("inbox", &examples()).unwrap();
    assert_eq!(p.predict("inbox", &["bills message 99"], 1).unwrap().1, PredictionSource::Prototypes);

    // First training: nothing active, so it is promoted.
    let linear = TrainOptions { head: HeadChoice::Only(HeadKind::Linear), ..TrainOptions::default() };
    let first = p.train("inbox", &linear, &QuietTraining).unwrap();
    assert!(first.promotion.promote, "{:?}", first.promotion);
    let (predictions, source) = p.predict("inbox", &["travel message 99", "bills message 99"], 1).unwrap();
    assert_eq!(source, PredictionSource::TrainedHead);
    assert_eq!([predictions[0].top[0].label.as_str(), predictions[1].top[0].label.as_str()], ["travel", "bills"]);

    // Forgetting a label erases the head trained on it and retrains from what remains.
    let report = p.forget(Some("inbox"), &Forget::Label("travel".into())).unwrap();
    assert_eq!(report.forgotten.examples, 30);
    assert!(matches!(report.retrain, Retrain::Retrained { private: false, .. }), "{:?}", report.retrain);
    let heads = p.heads("inbox").unwrap();
    let erased = heads.iter().find(|h| h.version == first.version).unwrap();
    assert!(erased.stale && !erased.active);
    assert!(heads.iter().any(|h| h.active && h.version > first.version));

    // Even its own old examples are answered with another label now, and
    // the remaining labels are still learned.
    let travel: Vec<String> = (0..30).map(|i| format!("travel message {i}")).collect();
    let travel: Vec<&str> = travel.iter().map(String::as_str).collect();
    let (predictions, _) = p.predict("inbox", &travel, 2).unwrap();
    assert!(predictions.iter().all(|p| p.top.iter().all(|s| s.label != "travel")));
    assert_eq!(p.predict("inbox", &["bills message 99"], 1).unwrap().0[0].top[0].label, "bills");
    let _ = std::fs::remove_dir_all(&dir);
}
