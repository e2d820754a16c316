//! Text to token ids, with the tokenizer file's own padding and truncation
//! replaced: truncation at the manifest's limit, no padding (batches are
//! padded to their longest member when they are formed).

mod bert_text;
mod builtin;
#[cfg(feature = "hf-tokenizers")]
mod hf;
mod wordpiece;

use std::path::Path;

use crate::error::{Error, Result};

/// One text's ids, as long as the text needs (at most `max_tokens`).
#[derive(Debug, Clone)]
pub(crate) struct Tokens {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
}

#[derive(Debug)]
pub(crate) struct TextTokenizer {
    inner: Implementation,
    highest_id: u32,
}

#[derive(Debug)]
enum Implementation {
    Builtin(builtin::BertTokenizer),
    #[cfg(feature = "hf-tokenizers")]
    HuggingFace(Box<hf::HfTokenizer>),
}

impl TextTokenizer {
    /// Reads a Hugging Face `tokenizer.json`. BERT WordPiece files run on
    /// the built-in tokenizer; others need the `hf-tokenizers` feature.
    pub fn load(path: &Path, max_tokens: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let file: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let inner = match builtin::BertTokenizer::from_file(&file, max_tokens)? {
            Ok(bert) => Implementation::Builtin(bert),
            Err(unsupported) => Self::other_kind(path, &bytes, max_tokens, unsupported)?,
        };
        let highest_id = match &inner {
            Implementation::Builtin(bert) => bert.highest_id(),
            #[cfg(feature = "hf-tokenizers")]
            Implementation::HuggingFace(hf) => hf.highest_id(),
        };
        Ok(Self { inner, highest_id })
    }

    #[cfg(feature = "hf-tokenizers")]
    fn other_kind(path: &Path, bytes: &[u8], max_tokens: usize, why: builtin::Unsupported) -> Result<Implementation> {
        match hf::HfTokenizer::load(path, bytes, max_tokens) {
            Ok(hf) => Ok(Implementation::HuggingFace(Box::new(hf))),
            Err(error) => Err(Error::Tokenizer(format!("{error} (not a BERT WordPiece file either: {})", why.0))),
        }
    }

    #[cfg(not(feature = "hf-tokenizers"))]
    fn other_kind(path: &Path, _: &[u8], _: usize, unsupported: builtin::Unsupported) -> Result<Implementation> {
        Err(Error::Tokenizer(format!(
            "{} uses {}: this build reads BERT WordPiece tokenizers only (build with the `hf-tokenizers` feature)",
            path.display(),
            unsupported.0
        )))
    }

    /// The largest id this tokenizer can emit; the model must accept it.
    pub fn highest_id(&self) -> u32 {
        self.highest_id
    }

    pub fn encode(&self, text: &str) -> Result<Tokens> {
        match &self.inner {
            Implementation::Builtin(bert) => Ok(bert.encode(text)),
            #[cfg(feature = "hf-tokenizers")]
            Implementation::HuggingFace(hf) => hf.encode(text),
        }
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

    /// Hugging Face `tokenizers` on the same file, as the encoder used it
    /// before the built-in tokenizer.
    fn reference(path: &Path, max_tokens: usize) -> tokenizers::Tokenizer {
        let mut reference = tokenizers::Tokenizer::from_file(path).unwrap();
        reference.with_padding(None);
        let truncation = tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() };
        reference.with_truncation(Some(truncation)).unwrap();
        reference
    }

    fn assert_same_ids(path: &Path, max_tokens: usize, texts: &[String]) {
        let builtin = TextTokenizer::load(path, max_tokens).unwrap();
        assert!(matches!(builtin.inner, Implementation::Builtin(_)), "{} is a BERT WordPiece file", path.display());
        let reference = reference(path, max_tokens);
        for text in texts {
            let ours = builtin.encode(text).unwrap();
            let theirs = reference.encode(text.as_str(), true).unwrap();
            let their_ids: Vec<i64> = theirs.get_ids().iter().map(|&i| i64::from(i)).collect();
            let their_types: Vec<i64> = theirs.get_type_ids().iter().map(|&i| i64::from(i)).collect();
            assert_eq!(ours.ids, their_ids, "ids of {text:?}");
            assert_eq!(ours.type_ids, their_types, "type ids of {text:?}");
        }
        let highest = reference.get_vocab(true).values().copied().max().unwrap();
        assert_eq!(builtin.highest_id(), highest);
    }

    /// Texts of every kind of character: the project's sentences, then
    /// random strings over scripts, accents, combining marks, CJK, emoji,
    /// controls, odd whitespace, private use, special-token spellings and
    /// long words.
    fn test_texts() -> Vec<String> {
        let mut texts: Vec<String> =
            include_str!("../../../../tests/data/sentences.txt").lines().map(str::to_owned).collect();
        let pool: Vec<char> = [
            (0x20, 0x7e),
            (0x00, 0x1f),
            (0x7f, 0xa0),
            (0xa1, 0x17f),
            (0x300, 0x36f),
            (0x370, 0x3ff),
            (0x400, 0x45f),
            (0x5d0, 0x5ea),
            (0x600, 0x6ff),
            (0x900, 0x97f),
            (0x1e00, 0x1eff),
            (0x2000, 0x206f),
            (0x20a0, 0x20bf),
            (0x3000, 0x303f),
            (0x3040, 0x30ff),
            (0x4e00, 0x4e80),
            (0xac00, 0xac40),
            (0xe000, 0xe010),
            (0xf900, 0xf910),
            (0xfe00, 0xfe0f),
            (0xfeff, 0xfeff),
            (0xff00, 0xff5e),
            (0xfffd, 0xfffd),
            (0x1f300, 0x1f64f),
            (0x1f900, 0x1f9ff),
            (0x20000, 0x20010),
            (0xe0001, 0xe007f),
        ]
        .iter()
        .flat_map(|&(low, high)| (low..=high).filter_map(char::from_u32))
        .collect();
        let words = ["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "##", "##ing", "İstanbul", "ΣΊΣΥΦΟΣ", "straße"];
        let mut rng = crate::test_rng::XorShift::from_state(0x2545_f491_4f6c_dd1d);
        let mut next = |bound: usize| rng.below(bound);
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..next(40) {
                match next(10) {
                    0 => text.push_str(words[next(words.len())]),
                    1 => text.push(' '),
                    2 => text.push_str(&"e".repeat(95 + next(10))),
                    _ => text.push(pool[next(pool.len())]),
                }
            }
            texts.push(text);
        }
        texts.push(String::new());
        texts.push("word ".repeat(300));
        texts
    }

    #[test]
    fn gives_the_ids_hugging_face_gives() {
        let texts = test_texts();
        let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny/tokenizer.json");
        assert_same_ids(&tiny, 48, &texts);
        assert_same_ids(&tiny, 2, &texts[..50]);
        if let Some(model) = crate::model::tests::default_model() {
            assert_same_ids(&model.join("tokenizer.json"), 256, &texts);
        }
    }

    #[test]
    fn added_tokens_and_bert_processing_match_hugging_face() {
        let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny/tokenizer.json");
        let mut file: serde_json::Value = serde_json::from_slice(&std::fs::read(tiny).unwrap()).unwrap();
        let added = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "special": true,
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false})
        };
        file["model"]["vocab"]["[MASK]ed"] = serde_json::json!(443);
        file["added_tokens"] = serde_json::json!([
            added(2, "[CLS]"),
            added(3, "[SEP]"),
            added(4, "[MASK]"),
            added(443, "[MASK]ed"),
            added(1, "[UNK]")
        ]);
        file["post_processor"] =
            serde_json::json!({"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]});
        file["normalizer"]["lowercase"] = serde_json::json!(false);
        let dir = crate::model::tests::tempdir("addedtok");
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let mut texts = test_texts();
        texts.extend(["[MASK]ed [MASK]e [SEP][SEP]x[CLS]", "a[MASK]edb"].map(String::from));
        assert_same_ids(&path, 40, &texts);

        file["added_tokens"][3]["content"] = serde_json::json!("[MASK]ing");
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        match TextTokenizer::load(&path, 40) {
            Ok(tokenizer) => {
                assert!(cfg!(feature = "hf-tokenizers") && !matches!(tokenizer.inner, Implementation::Builtin(_)))
            }
            Err(error) => assert!(error.to_string().contains("outside the vocabulary"), "{error}"),
        }
    }

    #[test]
    fn other_tokenizer_kinds_need_the_feature() {
        let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny/tokenizer.json");
        let mut file: serde_json::Value = serde_json::from_slice(&std::fs::read(tiny).unwrap()).unwrap();
        file["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
        let dir = crate::model::tests::tempdir("othertok");
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let loaded = TextTokenizer::load(&path, 16);
        if cfg!(feature = "hf-tokenizers") {
            let tokenizer = loaded.unwrap();
            assert!(!matches!(tokenizer.inner, Implementation::Builtin(_)));
            assert_eq!(tokenizer.encode("hello world").unwrap().ids.len(), 4);
        } else {
            let message = loaded.unwrap_err().to_string();
            assert!(message.contains("pre_tokenizer Whitespace") && message.contains("hf-tokenizers"), "{message}");
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
