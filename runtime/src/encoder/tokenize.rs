//! Text to token ids, with the tokenizer file's own padding and truncation
//! replaced: truncation at the manifest's limit, no padding (batches are
//! padded to their longest member when they are formed).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// One text's ids, as long as the text needs (at most `max_tokens`).
#[derive(Debug, Clone)]
pub(crate) struct Tokens {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
}

#[derive(Debug)]
pub(crate) struct TextTokenizer {
    inner: Tokenizer,
    highest_id: u32,
}

impl TextTokenizer {
    pub fn load(path: &Path, max_tokens: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Tokenizer(format!("{} does not exist", path.display())));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let highest_id = inner.get_vocab(true).values().copied().max().unwrap_or(0);
        Ok(Self { inner, highest_id })
    }

    /// The largest id this tokenizer can emit; the model must accept it.
    pub fn highest_id(&self) -> u32 {
        self.highest_id
    }

    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let encoding = self.inner.encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokens {
            ids: encoding.get_ids().iter().map(|&i| i64::from(i)).collect(),
            type_ids: encoding.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tiny_tokenizer(max_tokens: usize) -> TextTokenizer {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny/tokenizer.json");
        TextTokenizer::load(&path, max_tokens).unwrap()
    }

    #[test]
    fn overrides_the_files_fixed_padding_and_truncation() {
        // The tiny tokenizer.json pads to 16 and truncates at 16, like the
        // default model's does at 128.
        let tokenizer = tiny_tokenizer(40);
        assert_eq!(tokenizer.encode("hello").unwrap().ids.len(), 3, "[CLS] hello [SEP], unpadded");
        assert_eq!(tokenizer.encode(&"the ".repeat(100)).unwrap().ids.len(), 40);
        assert_eq!(tokenizer.encode("").unwrap().ids.len(), 2);
    }

    #[test]
    fn odd_text_tokenizes() {
        let tokenizer = tiny_tokenizer(48);
        for text in ["\u{0}\u{1}\u{7f}", "🎉🎉", "\u{202e}rtl", "a\u{0301}", "\r\n\t"] {
            let tokens = tokenizer.encode(text).unwrap();
            assert!(tokens.ids.len() >= 2 && tokens.ids.len() == tokens.type_ids.len());
            assert!(tokens.ids.iter().all(|&id| id <= i64::from(tokenizer.highest_id())));
        }
    }

    #[test]
    fn missing_or_corrupt_tokenizer_is_an_error() {
        let missing = TextTokenizer::load(Path::new("/nonexistent/tokenizer.json"), 8).unwrap_err();
        assert!(matches!(missing, Error::Tokenizer(_)));
        let dir = crate::model::tests::tempdir("badtok");
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, "{\"not\": \"a tokenizer\"}").unwrap();
        assert!(matches!(TextTokenizer::load(&path, 8), Err(Error::Tokenizer(_))));
    }
}
