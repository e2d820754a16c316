//! Arbitrary text as a model manifest and as a model catalog.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = attune::ModelManifest::parse(&text);
    let _ = attune::ModelCatalog::parse(&text);
});
