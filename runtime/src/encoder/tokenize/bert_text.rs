//! BERT's text preparation before the vocabulary is consulted: the
//! normaliser (clean, space out CJK ideographs, strip accents, lowercase)
//! and the pre-tokeniser (split on whitespace, isolate punctuation).
//!
//! Each step follows Hugging Face `tokenizers` 0.22 (`BertNormalizer`,
//! `BertPreTokenizer`) character for character, using the same Unicode
//! tables it uses (`unicode_categories` and the Unicode 9 decompositions of
//! `unicode-normalization-alignments`): cached features are keyed on the
//! tokenizer file, so a text must get the ids it got before. The tests in
//! `wordpiece.rs` compare the two on every kind of character.

use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

/// The `BertNormalizer` settings of a tokenizer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub(super) struct BertNormalizer {
    pub clean_text: bool,
    pub handle_chinese_chars: bool,
    /// `None` strips accents exactly when lowercasing.
    pub strip_accents: Option<bool>,
    pub lowercase: bool,
}

impl BertNormalizer {
    pub fn normalize(&self, text: &str) -> String {
        let mut out: String = if self.clean_text { cleaned(text).collect() } else { text.to_owned() };
        if self.handle_chinese_chars && out.chars().any(is_chinese_char) {
            out = spaced_ideographs(&out);
        }
        if self.strip_accents.unwrap_or(self.lowercase) && !out.is_ascii() {
            out = out.chars().nfd().map(|(c, _)| c).filter(|c| !c.is_mark_nonspacing()).collect();
        }
        if self.lowercase {
            out = out.chars().flat_map(char::to_lowercase).collect();
        }
        out
    }
}

fn spaced_ideographs(text: &str) -> String {
    let mut spaced = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_chinese_char(c) {
            spaced.extend([' ', c, ' ']);
        } else {
            spaced.push(c);
        }
    }
    spaced
}

/// Drops NUL, U+FFFD and control characters; every whitespace becomes a space.
fn cleaned(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars()
        .filter(|&c| !(c == '\0' || c == '\u{fffd}' || is_control(c)))
        .map(|c| if c.is_whitespace() { ' ' } else { c })
}

/// Other-category characters (Cc, Cf, Co), except the three that BERT
/// counts as whitespace.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// The CJK Unified Ideographs blocks and their extensions and compatibility
/// forms (not Hangul, Hiragana or Katakana, which separate words by spaces).
fn is_chinese_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The words of normalised text: split at whitespace (dropped), with every
/// punctuation character a word of its own.
pub(super) fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace).filter(|chunk| !chunk.is_empty()).flat_map(split_punctuation)
}

fn split_punctuation(chunk: &str) -> impl Iterator<Item = &str> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        let (index, c) = rest.char_indices().find(|&(_, c)| is_punctuation(c)).unwrap_or((rest.len(), ' '));
        let word = if index > 0 {
            &rest[..index]
        } else if index < rest.len() {
            &rest[..c.len_utf8()]
        } else {
            return None;
        };
        rest = &rest[word.len()..];
        Some(word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNCASED: BertNormalizer =
        BertNormalizer { clean_text: true, handle_chinese_chars: true, strip_accents: None, lowercase: true };

    #[test]
    fn normalizes_like_bert() {
        assert_eq!(UNCASED.normalize("Héllo\tWORLD\u{0}\u{200b}!"), "hello world!");
        assert_eq!(UNCASED.normalize("東京タワー"), " 東  京 タワー");
        let cased = BertNormalizer { lowercase: false, ..UNCASED };
        assert_eq!(cased.normalize("Héllo"), "Héllo");
        let stripped = BertNormalizer { strip_accents: Some(true), ..cased };
        assert_eq!(stripped.normalize("Héllo"), "Hello");
    }

    #[test]
    fn splits_words_and_punctuation() {
        let words: Vec<&str> = words("  hey, friend!!  how's it--going?$ ").collect();
        assert_eq!(words, ["hey", ",", "friend", "!", "!", "how", "'", "s", "it", "-", "-", "going", "?", "$"]);
        assert_eq!(words_of("¿qué?"), ["¿", "qué", "?"]);
        assert!(words_of(" \u{3000} ").is_empty());
    }

    fn words_of(text: &str) -> Vec<&str> {
        words(text).collect()
    }
}
