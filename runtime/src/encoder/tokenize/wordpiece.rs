//! WordPiece: each word as the longest vocabulary entries that cover it,
//! left to right, later pieces carrying the continuation prefix ("##"); a
//! word that cannot be covered, or is too long, is one unknown token.

use std::collections::HashMap;

#[derive(Debug)]
pub(super) struct WordPiece {
    vocab: HashMap<String, u32>,
    unknown: u32,
    prefix: String,
    max_word_chars: usize,
    /// No entry is longer, so no longer candidate needs a lookup.
    longest_entry: usize,
}

impl WordPiece {
    /// `None` when the vocabulary lacks the unknown token.
    pub fn new(vocab: HashMap<String, u32>, unknown: &str, prefix: String, max_word_chars: usize) -> Option<Self> {
        let unknown = *vocab.get(unknown)?;
        let longest_entry = vocab.keys().map(String::len).max().unwrap_or(0);
        Some(Self { vocab, unknown, prefix, max_word_chars, longest_entry })
    }

    pub fn id(&self, entry: &str) -> Option<u32> {
        self.vocab.get(entry).copied()
    }

    pub fn highest_id(&self) -> u32 {
        self.vocab.values().copied().max().unwrap_or(0)
    }

    /// Appends the ids of one word (normalised, without whitespace).
    pub fn push_ids(&self, word: &str, ids: &mut Vec<u32>) {
        if word.chars().count() > self.max_word_chars {
            ids.push(self.unknown);
            return;
        }
        let first = ids.len();
        let mut candidate = String::with_capacity(self.prefix.len() + word.len());
        let mut start = 0;
        while start < word.len() {
            match self.longest_piece(word, start, &mut candidate) {
                Some((id, end)) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(first);
                    ids.push(self.unknown);
                    return;
                }
            }
        }
    }

    /// The longest entry for `word[start..end]` (prefixed after the first
    /// piece) and its end.
    fn longest_piece(&self, word: &str, start: usize, candidate: &mut String) -> Option<(u32, usize)> {
        let prefix = if start > 0 { self.prefix.as_str() } else { "" };
        let mut end = word.len().min(start + self.longest_entry.saturating_sub(prefix.len()));
        while !word.is_char_boundary(end) {
            end -= 1;
        }
        while end > start {
            candidate.clear();
            candidate.push_str(prefix);
            candidate.push_str(&word[start..end]);
            if let Some(&id) = self.vocab.get(candidate.as_str()) {
                return Some((id, end));
            }
            end -= word[..end].chars().next_back().map_or(1, char::len_utf8);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wordpiece(entries: &[&str]) -> WordPiece {
        let vocab = entries.iter().enumerate().map(|(i, e)| (e.to_string(), i as u32)).collect();
        WordPiece::new(vocab, "[UNK]", "##".into(), 12).unwrap()
    }

    fn ids(model: &WordPiece, word: &str) -> Vec<u32> {
        let mut ids = vec![];
        model.push_ids(word, &mut ids);
        ids
    }

    #[test]
    fn longest_pieces_first() {
        let model = wordpiece(&["[UNK]", "un", "unaff", "##aff", "##able", "##a", "##ff", "ü", "##ü"]);
        assert_eq!(ids(&model, "unaffable"), [2, 4]);
        assert_eq!(ids(&model, "unaaff"), [1, 5, 3]);
        assert_eq!(ids(&model, "üü"), [7, 8]);
        assert_eq!(ids(&model, "unx"), [0], "an uncovered word is one unknown token");
        assert_eq!(ids(&model, &"un".repeat(7)), [0], "longer than 12 characters");
    }

    #[test]
    fn needs_its_unknown_token() {
        let vocab = HashMap::from([("a".to_string(), 0)]);
        assert!(WordPiece::new(vocab, "[UNK]", "##".into(), 100).is_none());
    }
}
