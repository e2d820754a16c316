//! Attune's own tokenizer for BERT-style WordPiece tokenizer files (the
//! sentence encoders of the catalog): added tokens, `BertNormalizer`,
//! `BertPreTokenizer`, `WordPiece` and a `[CLS] … [SEP]` post-processor.
//! It keeps Hugging Face `tokenizers` and its regular-expression engines
//! (about 1 MB) out of the mobile library; other tokenizer files need the
//! `hf-tokenizers` feature.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::Tokens;
use super::bert_text::{BertNormalizer, words};
use super::wordpiece::WordPiece;
use crate::error::{Error, Result};

#[derive(Debug)]
pub(super) struct BertTokenizer {
    /// Matched in the raw text before anything else (`[CLS]`, `[MASK]`…).
    added: Vec<(String, u32)>,
    normalizer: BertNormalizer,
    model: WordPiece,
    /// The post-processor's tokens around the text, with their type ids.
    before: Vec<(u32, u32)>,
    after: Vec<(u32, u32)>,
    text_type_id: u32,
    /// Ids the text may take after truncation.
    text_budget: usize,
}

/// What a file uses that the built-in tokenizer does not implement.
#[derive(Debug)]
pub(super) struct Unsupported(pub String);

impl BertTokenizer {
    /// Reads a parsed tokenizer file; `Ok(Err(_))` when it describes a
    /// tokenizer of another kind, `Err(_)` when it is malformed.
    pub fn from_file(file: &Value, max_tokens: usize) -> Result<std::result::Result<Self, Unsupported>> {
        let kind = |part: &str| file.get(part).and_then(|p| p.get("type")).and_then(Value::as_str).unwrap_or("none");
        for (part, wanted) in
            [("normalizer", "BertNormalizer"), ("pre_tokenizer", "BertPreTokenizer"), ("model", "WordPiece")]
        {
            if kind(part) != wanted {
                return Ok(Err(Unsupported(format!("{part} {}", kind(part)))));
            }
        }
        let normalizer: BertNormalizer = parse(&file["normalizer"], "normalizer")?;
        let model = wordpiece(&file["model"])?;
        let added = match added_tokens(file, &model)? {
            Ok(added) => added,
            Err(unsupported) => return Ok(Err(unsupported)),
        };
        let Some((before, text_type_id, after)) = template(file.get("post_processor"))? else {
            return Ok(Err(Unsupported(format!("post_processor {}", kind("post_processor")))));
        };
        let specials = before.len() + after.len();
        let text_budget = max_tokens.checked_sub(specials).ok_or_else(|| {
            Error::Tokenizer(format!("a limit of {max_tokens} tokens leaves no room for {specials} special tokens"))
        })?;
        Ok(Ok(Self { added, normalizer, model, before, after, text_type_id, text_budget }))
    }

    pub fn highest_id(&self) -> u32 {
        let added = self.added.iter().map(|&(_, id)| id);
        let specials = self.before.iter().chain(&self.after).map(|&(id, _)| id);
        added.chain(specials).fold(self.model.highest_id(), u32::max)
    }

    pub fn encode(&self, text: &str) -> Tokens {
        let mut text_ids = Vec::new();
        for segment in self.segments(text) {
            match segment {
                Segment::Added(id) => text_ids.push(id),
                Segment::Text(raw) => {
                    let normalized = self.normalizer.normalize(raw);
                    for word in words(&normalized) {
                        if text_ids.len() >= self.text_budget {
                            break;
                        }
                        self.model.push_ids(word, &mut text_ids);
                    }
                }
            }
            if text_ids.len() >= self.text_budget {
                break;
            }
        }
        text_ids.truncate(self.text_budget);
        let text = text_ids.into_iter().map(|id| (id, self.text_type_id));
        let all: Vec<(u32, u32)> = self.before.iter().copied().chain(text).chain(self.after.iter().copied()).collect();
        Tokens {
            ids: all.iter().map(|&(id, _)| i64::from(id)).collect(),
            type_ids: all.iter().map(|&(_, type_id)| i64::from(type_id)).collect(),
        }
    }

    /// The text cut at its added tokens: at each position the longest added
    /// token that starts there, the leftmost first.
    fn segments<'t>(&'t self, text: &'t str) -> impl Iterator<Item = Segment<'t>> + 't {
        let mut rest = text;
        let mut pending: Option<u32> = None;
        std::iter::from_fn(move || {
            if let Some(id) = pending.take() {
                return Some(Segment::Added(id));
            }
            if rest.is_empty() {
                return None;
            }
            let found = rest.char_indices().find_map(|(at, _)| self.added_at(&rest[at..]).map(|m| (at, m)));
            let Some((at, (len, id))) = found else {
                return Some(Segment::Text(std::mem::take(&mut rest)));
            };
            let before = &rest[..at];
            rest = &rest[at + len..];
            if before.is_empty() {
                Some(Segment::Added(id))
            } else {
                pending = Some(id);
                Some(Segment::Text(before))
            }
        })
    }

    fn added_at(&self, text: &str) -> Option<(usize, u32)> {
        self.added.iter().filter(|(content, _)| text.starts_with(content.as_str())).map(|(c, id)| (c.len(), *id)).max()
    }
}

enum Segment<'t> {
    Text(&'t str),
    Added(u32),
}

fn parse<T: for<'de> Deserialize<'de>>(value: &Value, part: &str) -> Result<T> {
    T::deserialize(value).map_err(|e| Error::Tokenizer(format!("tokenizer file, {part}: {e}")))
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    normalized: bool,
}

/// The added tokens, when each is matched verbatim and is a vocabulary
/// entry under its own id (Hugging Face numbers the others itself).
fn added_tokens(file: &Value, model: &WordPiece) -> Result<std::result::Result<Vec<(String, u32)>, Unsupported>> {
    let Some(list) = file.get("added_tokens") else { return Ok(Ok(Vec::new())) };
    let tokens: Vec<AddedToken> = parse(list, "added_tokens")?;
    if let Some(token) = tokens.iter().find(|t| t.single_word || t.lstrip || t.rstrip || t.normalized) {
        return Ok(Err(Unsupported(format!(
            "added token {:?} with single_word, lstrip, rstrip or normalized matching",
            token.content
        ))));
    }
    if let Some(token) = tokens.iter().find(|t| model.id(&t.content) != Some(t.id)) {
        return Ok(Err(Unsupported(format!("added token {:?} outside the vocabulary", token.content))));
    }
    Ok(Ok(tokens.into_iter().filter(|t| !t.content.is_empty()).map(|t| (t.content, t.id)).collect()))
}

#[derive(Deserialize)]
struct WordPieceFile {
    vocab: HashMap<String, u32>,
    #[serde(default = "default_unknown")]
    unk_token: String,
    #[serde(default = "default_prefix")]
    continuing_subword_prefix: String,
    #[serde(default = "default_max_word_chars")]
    max_input_chars_per_word: usize,
}

fn default_unknown() -> String {
    "[UNK]".into()
}

fn default_prefix() -> String {
    "##".into()
}

fn default_max_word_chars() -> usize {
    100
}

fn wordpiece(value: &Value) -> Result<WordPiece> {
    let file: WordPieceFile = parse(value, "model")?;
    let unknown = file.unk_token.clone();
    WordPiece::new(file.vocab, &unknown, file.continuing_subword_prefix, file.max_input_chars_per_word)
        .ok_or_else(|| Error::Tokenizer(format!("tokenizer file: the vocabulary lacks its unknown token {unknown:?}")))
}

type Template = (Vec<(u32, u32)>, u32, Vec<(u32, u32)>);

/// The single-text template of a `TemplateProcessing` or `BertProcessing`
/// post-processor: tokens before the text, the text's type id, tokens
/// after. `None` for any other post-processor.
fn template(processor: Option<&Value>) -> Result<Option<Template>> {
    let Some(processor) = processor.filter(|p| !p.is_null()) else { return Ok(Some((vec![], 0, vec![]))) };
    match processor.get("type").and_then(Value::as_str) {
        Some("BertProcessing") => {
            let pair = |name: &str| -> Result<u32> {
                let (_, id): (String, u32) = parse(&processor[name], name)?;
                Ok(id)
            };
            Ok(Some((vec![(pair("cls")?, 0)], 0, vec![(pair("sep")?, 0)])))
        }
        Some("TemplateProcessing") => template_processing(processor).map(Some),
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
enum Piece {
    SpecialToken { id: String, type_id: u32 },
    Sequence { id: String, type_id: u32 },
}

#[derive(Deserialize)]
struct SpecialToken {
    ids: Vec<u32>,
}

fn template_processing(processor: &Value) -> Result<Template> {
    let pieces: Vec<Piece> = parse(&processor["single"], "post_processor.single")?;
    let specials: HashMap<String, SpecialToken> = parse(&processor["special_tokens"], "post_processor.special_tokens")?;
    let (mut before, mut after, mut text_type_id) = (Vec::new(), Vec::new(), None);
    for piece in pieces {
        match piece {
            Piece::Sequence { id, type_id } if id == "A" && text_type_id.is_none() => text_type_id = Some(type_id),
            Piece::Sequence { id, .. } => {
                return Err(Error::Tokenizer(format!("tokenizer file: the single template uses sequence {id:?}")));
            }
            Piece::SpecialToken { id, type_id } => {
                let token = specials.get(&id).ok_or_else(|| {
                    Error::Tokenizer(format!("tokenizer file: the template's special token {id:?} is not defined"))
                })?;
                let side = if text_type_id.is_none() { &mut before } else { &mut after };
                side.extend(token.ids.iter().map(|&i| (i, type_id)));
            }
        }
    }
    let text_type_id =
        text_type_id.ok_or_else(|| Error::Tokenizer("tokenizer file: the single template has no sequence".into()))?;
    Ok((before, text_type_id, after))
}
