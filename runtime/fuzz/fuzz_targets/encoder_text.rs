//! Arbitrary bytes as text for the tokenizer and the encoder (the committed
//! tiny model on tract): control characters, invalid UTF-8 made lossy, huge
//! strings. A vector of the model's width with finite values, or a typed error.
#![no_main]

use std::sync::OnceLock;

use attune::{Encoder, EncoderOptions, OnnxEncoder};
use libfuzzer_sys::fuzz_target;

fn encoder() -> &'static OnnxEncoder {
    static ENCODER: OnceLock<OnnxEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny");
        OnnxEncoder::load(&tiny, &EncoderOptions { threads: 1, ..EncoderOptions::default() }).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Two texts in one batch: padding and bucketing see different lengths.
    let texts = [text.as_ref(), "a short neighbour"];
    if let Ok(embeddings) = encoder().embed(&texts) {
        assert_eq!(embeddings.len(), 2);
        assert!(embeddings.as_slice().iter().all(|x| x.is_finite()), "non-finite embedding");
    }
});
