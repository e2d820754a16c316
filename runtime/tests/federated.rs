//! Federated rounds between devices, each its own database, on the real
//! model: updates are values (no socket), the test plays the server with a
//! plain weighted mean (the product leaves that to Flower).

mod support;

use attune::{
    EncoderOptions, Error, FederatedOptions, NewExample, Personalizer, PersonalizerConfig, PredictionSource,
    QuietTraining, SharedModel, TrainOptions,
};
use support::{Intents, default_model_dir, scratch_dir, tiny_dir};

fn device(dir: &std::path::Path, name: &str, model: &std::path::Path) -> support::Opened {
    let config = PersonalizerConfig {
        database: dir.join(format!("{name}.db")),
        model_dir: model.to_path_buf(),
        encoder: EncoderOptions::default(),
        encryption_key: None,
    };
    support::Opened::open(&config)
}

/// The width and fingerprint of a device's backbone.
fn backbone(p: &Personalizer) -> (usize, String) {
    (p.encoder().dim(), p.encoder().fingerprint().to_string())
}

/// What the server does: the mean of the updates, weighted by examples.
fn weighted_mean(updates: &[attune::FederatedUpdate]) -> SharedModel {
    let total: f32 = updates.iter().map(|u| u.examples as f32).sum();
    let first = &updates[0].model;
    let mut weights = vec![0.0; first.weights().len()];
    let mut bias = vec![0.0; first.bias().len()];
    for update in updates {
        let share = update.examples as f32 / total;
        weights.iter_mut().zip(update.model.weights()).for_each(|(w, u)| *w += share * u);
        bias.iter_mut().zip(update.model.bias()).for_each(|(b, u)| *b += share * u);
    }
    SharedModel::from_parts(first.fingerprint(), first.labels().to_vec(), weights, bias).unwrap()
}

/// Three devices, each with examples of only some intents (non-IID).
fn devices(tag: &str, model: &std::path::Path) -> (Vec<support::Opened>, Vec<String>, Vec<(String, String)>) {
    let intents = Intents::read().intents;
    let labels: Vec<String> = intents.iter().map(|i| i.label.clone()).collect();
    let dir = scratch_dir(tag);
    let shares: [&[usize]; 3] = [&[0, 1, 2, 3], &[3, 4, 5], &[5, 6, 7, 0]];
    let devices = shares
        .iter()
        .enumerate()
        .map(|(d, share)| {
            let p = device(&dir, &format!("device-{d}"), model);
            let intents = &intents;
            let examples: Vec<NewExample> = share
                .iter()
                .flat_map(|&i| {
                    intents[i].train.iter().map(move |t| NewExample::new(t.as_str(), intents[i].label.as_str()))
                })
                .collect();
            p.add_examples("intents", &examples).unwrap();
            p
        })
        .collect();
    let held_out = intents.iter().flat_map(|i| i.held_out.iter().map(|t| (t.clone(), i.label.clone()))).collect();
    (devices, labels, held_out)
}

fn rounds(devices: &[support::Opened], start: SharedModel, rounds: usize) -> SharedModel {
    let mut shared = start;
    for round in 0..rounds {
        let options = FederatedOptions { seed: round as u64, ..FederatedOptions::default() };
        let updates: Vec<_> =
            devices.iter().map(|p| p.federated_fit("intents", &shared, &options, &QuietTraining).unwrap()).collect();
        shared = weighted_mean(&updates);
    }
    shared
}

fn accuracy(p: &Personalizer, held_out: &[(String, String)]) -> f64 {
    p.evaluate("intents", held_out).unwrap().accuracy
}

/// The shared model learns over rounds; on a real backbone it knows more
/// than any one device (the tiny test model is too weak for that).
fn federation_learns(model: &std::path::Path, tag: &str, beats_one_device: bool) {
    let (devices, labels, held_out) = devices(tag, model);
    let (dim, fingerprint) = backbone(&devices[0]);
    let zero = SharedModel::zeros(&fingerprint, labels.clone(), dim).unwrap();
    let shared = rounds(&devices, zero.clone(), 5);
    let chance = {
        let start = device(&scratch_dir(&format!("{tag}-zero")), "zero", model);
        start.adopt_shared("intents", &zero).unwrap();
        accuracy(&start, &held_out)
    };

    // A new device with no examples at all starts from the shared model.
    let newcomer = device(&scratch_dir(&format!("{tag}-new")), "newcomer", model);
    let adopted = newcomer.adopt_shared("intents", &shared).unwrap();
    assert!(adopted.active);
    let (_, source) = newcomer.predict("intents", &["hello"], 1).unwrap();
    assert_eq!(source, PredictionSource::SharedHead);
    let federated = accuracy(&newcomer, &held_out);
    assert!(federated > chance, "shared {federated} vs the zero model {chance}");

    // Each device alone knows only its own intents.
    devices[0].train("intents", &TrainOptions::default(), &QuietTraining).unwrap();
    let alone = accuracy(&devices[0], &held_out);
    assert!(!beats_one_device || federated > alone, "shared {federated} vs one device alone {alone}");

    // Personalizing from the shared model keeps every shared label.
    devices[1].adopt_shared("intents", &shared).unwrap();
    devices[1].train("intents", &TrainOptions::default(), &QuietTraining).unwrap();
    let (predictions, _) = devices[1].predict("intents", &["hello"], labels.len()).unwrap();
    assert_eq!(predictions[0].top.len(), labels.len(), "the personal head knows every shared label");
    let metrics = devices[1].federated_evaluate("intents", &shared).unwrap();
    assert!(metrics.n > 0 && metrics.accuracy > 0.0);
}

#[test]
fn federation_on_the_tiny_model() {
    federation_learns(&tiny_dir(), "federated-tiny", false);
}

#[test]
fn federation_on_the_default_model() {
    if let Some(model) = default_model_dir() {
        federation_learns(&model, "federated-default", true);
    }
}

#[test]
fn bad_shared_models_are_refused_and_change_nothing() {
    let (devices, labels, _) = devices("federated-bad", &tiny_dir());
    let p = &devices[0];
    let (dim, fingerprint) = backbone(p);
    let shared = SharedModel::zeros(&fingerprint, labels.clone(), dim).unwrap();
    p.adopt_shared("intents", &shared).unwrap();
    let before = p.heads("intents").unwrap();

    let foreign = SharedModel::zeros("another-backbone", labels.clone(), dim).unwrap();
    assert!(matches!(p.adopt_shared("intents", &foreign), Err(Error::HeadModelMismatch { .. })));
    let other_labels = SharedModel::zeros(&fingerprint, vec!["x".into(), "y".into()], dim).unwrap();
    assert!(matches!(p.adopt_shared("intents", &other_labels), Err(Error::InvalidInput(_))));
    assert!(matches!(
        p.federated_fit("intents", &other_labels, &FederatedOptions::default(), &QuietTraining),
        Err(Error::InvalidInput(_))
    ));
    let narrow = SharedModel::zeros(&fingerprint, labels.clone(), dim + 1).unwrap();
    assert!(matches!(p.federated_evaluate("intents", &narrow), Err(Error::InvalidInput(_))));

    let mut nan = shared.weights().to_vec();
    nan[3] = f32::NAN;
    assert!(matches!(
        SharedModel::from_parts(&fingerprint, labels.clone(), nan, shared.bias().to_vec()),
        Err(Error::InvalidInput(_))
    ));
    let mut bytes = shared.to_bytes();
    assert!(SharedModel::from_bytes(&bytes, &fingerprint).is_ok());
    assert!(matches!(SharedModel::from_bytes(&bytes, "another-backbone"), Err(Error::HeadModelMismatch { .. })));
    bytes.truncate(bytes.len() / 2);
    assert!(matches!(SharedModel::from_bytes(&bytes, &fingerprint), Err(Error::InvalidHead(_))));

    // A round on a device without an example of the shared labels.
    let empty = device(&scratch_dir("federated-empty"), "empty", &tiny_dir());
    empty.add_examples("intents", &[NewExample::new("something else entirely", "not-shared")]).unwrap();
    assert!(matches!(
        empty.federated_fit("intents", &shared, &FederatedOptions::default(), &QuietTraining),
        Err(Error::NotTrained(_))
    ));
    assert_eq!(p.heads("intents").unwrap(), before);
}

#[test]
fn an_update_carries_no_text() {
    let (devices, labels, _) = devices("federated-bytes", &tiny_dir());
    let p = &devices[2];
    let (dim, fingerprint) = backbone(p);
    let shared = SharedModel::zeros(&fingerprint, labels, dim).unwrap();
    let update = p.federated_fit("intents", &shared, &FederatedOptions::default(), &QuietTraining).unwrap();
    assert_eq!(update.examples, 12);
    let bytes = update.model.to_bytes();
    for intent in Intents::read().intents {
        for text in &intent.train {
            let needle = text.as_bytes();
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "the update holds {text:?}");
        }
    }
}

#[test]
fn a_private_update_is_clipped_noised_and_charged_to_the_ledger() {
    let (devices, labels, _) = devices("federated-private", &tiny_dir());
    let p = &devices[0];
    let (dim, fingerprint) = backbone(p);
    let shared = SharedModel::zeros(&fingerprint, labels, dim).unwrap();
    let privacy = attune::UpdatePrivacy { clip_norm: 0.5, noise_multiplier: 2.0, epsilon: 8.0, delta: None };
    let options = FederatedOptions { privacy: Some(privacy), ..FederatedOptions::default() };
    let first = p.federated_fit("intents", &shared, &options, &QuietTraining).unwrap();
    let spent = first.privacy.unwrap();
    assert!(spent.epsilon > 0.0 && spent.epsilon <= 8.0 && spent.delta == 1e-5);
    assert_eq!(p.store().private_runs(p.store().task_id("intents").unwrap()).unwrap().len(), 1);
    // Noise drawn afresh: the same round twice gives two different updates.
    let second = p.federated_fit("intents", &shared, &options, &QuietTraining).unwrap();
    assert_ne!(first.model.weights(), second.model.weights());
    assert!(second.privacy.unwrap().epsilon > spent.epsilon, "releases compose");

    // The task is private now: a public update is refused, and so is one the budget cannot pay for.
    assert!(matches!(
        p.federated_fit("intents", &shared, &FederatedOptions::default(), &QuietTraining),
        Err(Error::InvalidInput(_))
    ));
    let costly = attune::UpdatePrivacy { noise_multiplier: 0.3, ..privacy };
    let refused = FederatedOptions { privacy: Some(costly), ..FederatedOptions::default() };
    assert!(matches!(
        p.federated_fit("intents", &shared, &refused, &QuietTraining),
        Err(Error::PrivacyBudgetExceeded(_))
    ));
    assert_eq!(p.store().private_runs(p.store().task_id("intents").unwrap()).unwrap().len(), 2);
    // Local training of the task is private from now on, under the same ledger.
    let trained = p.train("intents", &TrainOptions::default(), &QuietTraining);
    assert!(
        matches!(&trained, Ok(outcome) if outcome.report.private_run.is_some())
            || matches!(trained, Err(Error::PrivacyBudgetExceeded(_)))
    );
}

#[test]
fn a_clipped_update_moves_the_shared_model_at_most_the_clip_norm_and_charges_nothing() {
    let (devices, labels, _) = devices("federated-clipped", &tiny_dir());
    let p = &devices[0];
    let (dim, fingerprint) = backbone(p);
    let shared = SharedModel::zeros(&fingerprint, labels, dim).unwrap();
    let free = p.federated_fit("intents", &shared, &FederatedOptions::default(), &QuietTraining).unwrap();
    let change = |update: &attune::FederatedUpdate| {
        update.model.weights().iter().chain(update.model.bias()).map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt()
    };
    let clip = (change(&free) / 4.0) as f32;
    let options = FederatedOptions { clip_norm: Some(clip), ..FederatedOptions::default() };
    let clipped = p.federated_fit("intents", &shared, &options, &QuietTraining).unwrap();
    assert!((change(&clipped) - f64::from(clip)).abs() < 1e-3 * f64::from(clip), "scaled onto the clip norm");
    // Clipping alone is no release: the server's noise is what protects the device.
    assert!(clipped.privacy.is_none());
    assert!(p.store().private_runs(p.store().task_id("intents").unwrap()).unwrap().is_empty());

    let both = FederatedOptions {
        privacy: Some(attune::UpdatePrivacy { clip_norm: 0.5, noise_multiplier: 2.0, epsilon: 8.0, delta: None }),
        ..options.clone()
    };
    assert!(matches!(p.federated_fit("intents", &shared, &both, &QuietTraining), Err(Error::InvalidInput(_))));
    let broken = FederatedOptions { clip_norm: Some(f32::NAN), ..FederatedOptions::default() };
    assert!(matches!(p.federated_fit("intents", &shared, &broken, &QuietTraining), Err(Error::InvalidInput(_))));
}
