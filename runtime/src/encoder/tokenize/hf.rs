//! Any other tokenizer file, through Hugging Face `tokenizers` (feature
//! `hf-tokenizers`): BPE, Unigram and the rest.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::Tokens;
use crate::error::{Error, Result};

#[derive(Debug)]
pub(super) struct HfTokenizer(Tokenizer);

impl HfTokenizer {
    pub fn load(path: &Path, bytes: &[u8], max_tokens: usize) -> Result<Self> {
        let mut inner =
            Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Self(inner))
    }

    pub fn highest_id(&self) -> u32 {
        self.0.get_vocab(true).values().copied().max().unwrap_or(0)
    }

    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let encoding = self.0.encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokens {
            ids: encoding.get_ids().iter().map(|&i| i64::from(i)).collect(),
            type_ids: encoding.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
        })
    }
}
