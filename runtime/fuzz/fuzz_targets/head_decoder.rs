//! Arbitrary bytes as a stored head checkpoint (seeded with real prototype,
//! linear and MLP heads of the tiny model): a typed error, or a head that
//! predicts without panicking and survives a round trip.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn fingerprint() -> &'static str {
    static FINGERPRINT: OnceLock<String> = OnceLock::new();
    FINGERPRINT.get_or_init(|| {
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny");
        attune::ModelManifest::load(&tiny).unwrap().fingerprint
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = attune::Head::from_bytes(data, fingerprint()) {
        let feature = vec![0.5f32; head.dim()];
        let prediction = head.predict(&feature, 3).expect("a decoded head predicts");
        assert!(prediction.top.iter().all(|s| s.probability.is_finite()), "non-finite probability");
        let again = attune::Head::from_bytes(&head.to_bytes(), fingerprint()).expect("a decoded head re-encodes");
        assert_eq!(again, head);
    }
});
