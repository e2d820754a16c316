//! Arbitrary bytes as a CSV file and as a JSON Lines file of labelled texts:
//! rows or a typed error, never a panic, and never an empty text accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let columns = attune::Columns::default();
    for format in [attune::ImportFormat::Csv, attune::ImportFormat::JsonLines] {
        if let Ok(rows) = attune::read_labelled(data, format, &columns) {
            for (text, label) in rows {
                assert!(!text.trim().is_empty() && !label.trim().is_empty(), "an empty field was accepted");
            }
        }
    }
});
