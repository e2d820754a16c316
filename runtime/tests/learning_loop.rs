//! The learning loop a new user meets: describe the labels, label one
//! message each, train; label two more each, train again. The second head
//! must be promoted and must be better on held-out messages — promotion
//! compares the heads on the new examples, which neither was trained on.

mod support;

use std::path::Path;

use attune::{
    EncoderOptions, Personalizer, PersonalizerConfig, PredictionSource, PromotionBasis, QuietTraining, TrainOptions,
};
use support::{Intents, default_model_dir, scratch_dir, tiny_dir};

/// Accuracy on the held-out messages after one, then three examples per intent.
fn one_then_three(model_dir: &Path, tag: &str) -> (f64, f64) {
    let dir = scratch_dir(tag);
    let config = PersonalizerConfig {
        database: dir.join("user.db"),
        model_dir: model_dir.to_path_buf(),
        encoder: EncoderOptions::default(),
        encryption_key: None,
    };
    let p = Personalizer::open(&config).unwrap();
    let data = Intents::read();
    let held_out = data.held_out();
    for intent in &data.intents {
        p.describe_label("support", &intent.label, &intent.description).unwrap();
    }
    p.add_examples("support", &data.examples(0..1)).unwrap();
    let first = p.train("support", &TrainOptions::default(), &QuietTraining).unwrap();
    assert!(first.promotion.promote, "{:?}", first.promotion);
    let after_one = p.evaluate("support", &held_out).unwrap().accuracy;

    p.add_examples("support", &data.examples(1..3)).unwrap();
    let second = p.train("support", &TrainOptions::default(), &QuietTraining).unwrap();
    let promotion = &second.promotion;
    assert!(promotion.promote, "{promotion:?}");
    // Decided on the new examples, which the new head predicted out of fold.
    assert!(matches!(promotion.basis, PromotionBasis::FreshExamples | PromotionBasis::MoreData), "{promotion:?}");
    assert!(promotion.compared_rows > 0 && promotion.compared_rows <= 2 * data.intents.len() as u64, "{promotion:?}");
    let (_, source) = p.predict("support", &["play a song"], 1).unwrap();
    assert_eq!(source, PredictionSource::TrainedHead);
    let after_three = p.evaluate("support", &held_out).unwrap().accuracy;
    eprintln!("{tag}: held-out accuracy {after_one:.3} after one example per intent, {after_three:.3} after three");
    (after_one, after_three)
}

#[test]
fn more_examples_are_promoted_and_help_on_the_tiny_model() {
    let (one, three) = one_then_three(&tiny_dir(), "loop-tiny");
    assert!(three > one, "accuracy {one} → {three}");
}

#[test]
fn more_examples_are_promoted_and_help_on_the_default_model() {
    let Some(dir) = default_model_dir() else { return };
    let (one, three) = one_then_three(&dir, "loop-default");
    assert!(three > one, "accuracy {one} → {three}");
}
