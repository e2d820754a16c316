//! Model manifests and the model catalog: what a model directory holds and
//! how its encoder must be driven. Both are written by `models/fetch`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// File name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_FORMAT: u32 = 1;
/// Far above any sentence encoder's position table; rejects absurd manifests.
const MAX_TOKENS_LIMIT: usize = 8192;
const MAX_DIM_LIMIT: usize = 16384;

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The first token's state.
    Cls,
}

/// Names of the model's inputs; `token_type_ids` is absent from some exports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputNames {
    pub input_ids: String,
    pub attention_mask: String,
    #[serde(default)]
    pub token_type_ids: Option<String>,
}

/// A compiled graph next to (or instead of) the ONNX file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompiledFile {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    /// How the graph computes its weight products.
    #[serde(default)]
    pub precision: Precision,
}

/// The arithmetic of a compiled graph's weight products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// As the ONNX file computes them: features equal the ONNX path's.
    #[default]
    F32,
    /// Int8 × int8 with activations quantised per row at run time: features
    /// close to, not equal to, the ONNX path's, so they get a fingerprint of
    /// their own and never mix with f32 features in a store.
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// The contract of one model directory, read from its `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelManifest {
    pub format: u32,
    pub id: String,
    /// Identity of model + tokenizer; cached features and heads are keyed on it.
    pub fingerprint: String,
    pub model_file: String,
    pub model_sha256: String,
    pub model_bytes: u64,
    pub tokenizer_file: String,
    pub tokenizer_sha256: String,
    pub dim: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_tokens: usize,
    pub inputs: InputNames,
    pub output: String,
    /// Prefixes some models want before a text, by role (e.g. `query`, `passage`).
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
    /// The model compiled for tract (`attune compile-model`), when present.
    /// A directory with one may lack the ONNX file: tract runs the compiled
    /// graph, ONNX Runtime needs the ONNX file.
    #[serde(default)]
    pub compiled: Option<CompiledFile>,
    #[serde(skip)]
    directory: PathBuf,
}

impl ModelManifest {
    /// Reads and checks `DIR/manifest.json`. Cheap: the model is not opened,
    /// but its size is compared with the manifest to catch truncated copies.
    pub fn load(directory: &Path) -> Result<Self> {
        let path = directory.join(MANIFEST_FILE);
        if !directory.is_dir() {
            return Err(Error::manifest(&path, "model directory does not exist (run models/fetch)"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut manifest = Self::parse(&text).map_err(|reason| Error::manifest(&path, reason))?;
        manifest.directory = directory.to_path_buf();
        let mut expected = Vec::new();
        if let Some(compiled) = &manifest.compiled {
            expected.push((compiled.file.as_str(), compiled.bytes));
        }
        // With a compiled graph, the ONNX file is optional (apps ship one of them).
        if manifest.compiled.is_none() || manifest.model_path().exists() {
            expected.push((manifest.model_file.as_str(), manifest.model_bytes));
        }
        for (file, bytes) in expected {
            let model = directory.join(file);
            let actual = std::fs::metadata(&model).map_err(|e| Error::io(&model, e))?.len();
            if actual != bytes {
                return Err(Error::manifest(
                    &path,
                    format!("{file} is {actual} bytes, the manifest says {bytes} (truncated or replaced?)"),
                ));
            }
        }
        Ok(manifest)
    }

    /// Parses and validates manifest JSON without touching the file system.
    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: ModelManifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "format {} is not supported (this runtime reads format {MANIFEST_FORMAT})",
                self.format
            ));
        }
        if self.dim == 0 || self.dim > MAX_DIM_LIMIT {
            return Err(format!("dim {} is out of range 1..={MAX_DIM_LIMIT}", self.dim));
        }
        if self.max_tokens < 2 || self.max_tokens > MAX_TOKENS_LIMIT {
            return Err(format!("max_tokens {} is out of range 2..={MAX_TOKENS_LIMIT}", self.max_tokens));
        }
        let compiled = self.compiled.as_ref().map(|c| ("compiled.file", &c.file));
        let files = [("model_file", &self.model_file), ("tokenizer_file", &self.tokenizer_file)];
        for (what, name) in files.into_iter().chain(compiled) {
            if !is_plain_file_name(name) {
                return Err(format!("{what} {name:?} must be a file name inside the model directory"));
            }
        }
        let expected = expected_fingerprint(&self.model_sha256, &self.tokenizer_sha256, self.precision());
        if self.fingerprint != expected {
            return Err(format!(
                "fingerprint does not match the model and tokenizer hashes at {} precision",
                self.precision().name()
            ));
        }
        Ok(())
    }

    /// Directory the manifest was loaded from.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    pub fn model_path(&self) -> PathBuf {
        self.directory.join(&self.model_file)
    }

    /// The precision of the features this directory produces.
    pub fn precision(&self) -> Precision {
        self.compiled.as_ref().map_or(Precision::F32, |c| c.precision)
    }

    /// The compiled graph, when the manifest names one.
    pub fn compiled_path(&self) -> Option<PathBuf> {
        self.compiled.as_ref().map(|c| self.directory.join(&c.file))
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.directory.join(&self.tokenizer_file)
    }

    /// Hashes the model and tokenizer files and compares them with the
    /// manifest. Costs a full read of the model; `load` only checks its size.
    pub fn verify_files(&self) -> Result<()> {
        let mut files = vec![(self.tokenizer_path(), &self.tokenizer_sha256)];
        if let Some(compiled) = &self.compiled {
            files.push((self.directory.join(&compiled.file), &compiled.sha256));
        }
        if self.compiled.is_none() || self.model_path().exists() {
            files.push((self.model_path(), &self.model_sha256));
        }
        for (path, expected) in files {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            if &hex(&Sha256::digest(&bytes)) != expected {
                return Err(Error::ModelMismatch(format!("{} does not match its sha256", path.display())));
            }
        }
        Ok(())
    }
}

/// The fingerprint `models/attune_models.py` writes: a hash of both file
/// hashes; an int8 graph's features hash the precision too.
pub(crate) fn expected_fingerprint(model_sha256: &str, tokenizer_sha256: &str, precision: Precision) -> String {
    let mut text = format!("attune-fingerprint-v1\n{model_sha256}\n{tokenizer_sha256}\n");
    if precision != Precision::F32 {
        text.push_str(precision.name());
        text.push('\n');
    }
    hex(&Sha256::digest(text.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != ".."
}

/// The catalog of known models (`models/catalog.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelCatalog {
    pub format: u32,
    /// Name of the model used when none is given.
    pub default: String,
    pub models: BTreeMap<String, CatalogEntry>,
}

/// One catalog model: where its files come from and how to drive it.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogEntry {
    pub description: String,
    pub license: String,
    pub dim: usize,
    pub max_tokens: usize,
}

impl ModelCatalog {
    pub fn parse(text: &str) -> Result<Self, String> {
        let catalog: ModelCatalog = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if catalog.format != 1 {
            return Err(format!("catalog format {} is not supported", catalog.format));
        }
        if !catalog.models.contains_key(&catalog.default) {
            return Err(format!("default model {:?} is not in the catalog", catalog.default));
        }
        Ok(catalog)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|reason| Error::manifest(path, reason))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn tiny_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny")
    }

    #[test]
    fn loads_the_tiny_manifest() {
        let manifest = ModelManifest::load(&tiny_dir()).unwrap();
        assert_eq!(manifest.dim, 32);
        assert_eq!(manifest.pooling, Pooling::Mean);
        assert_eq!(manifest.inputs.token_type_ids.as_deref(), Some("token_type_ids"));
        manifest.verify_files().unwrap();
    }

    #[test]
    fn fingerprint_matches_the_python_writer() {
        let manifest = ModelManifest::load(&tiny_dir()).unwrap();
        assert_eq!(
            expected_fingerprint(&manifest.model_sha256, &manifest.tokenizer_sha256, Precision::F32),
            manifest.fingerprint
        );
    }

    #[test]
    fn rejects_bad_manifests_with_reasons() {
        let good = std::fs::read_to_string(tiny_dir().join(MANIFEST_FILE)).unwrap();
        let cases = [
            ("\"format\": 1", "\"format\": 9", "format 9"),
            ("\"dim\": 32", "\"dim\": 0", "dim 0"),
            ("\"max_tokens\": 48", "\"max_tokens\": 100000", "max_tokens"),
            ("\"model_file\": \"model.onnx\"", "\"model_file\": \"../x.onnx\"", "file name"),
            ("\"fingerprint\": \"", "\"fingerprint\": \"00", "fingerprint"),
        ];
        for (from, to, expected) in cases {
            assert!(good.contains(from), "{from}");
            let error = ModelManifest::parse(&good.replacen(from, to, 1)).unwrap_err();
            assert!(error.contains(expected), "{error} should mention {expected}");
        }
        assert!(ModelManifest::parse("{").is_err());
        assert!(ModelManifest::parse("").is_err());
    }

    #[test]
    fn missing_directory_and_truncated_model_are_typed_errors() {
        let missing = ModelManifest::load(Path::new("/nonexistent/attune-model")).unwrap_err();
        assert!(matches!(missing, Error::Manifest { .. }), "{missing}");

        let dir = tempdir("truncated");
        for file in ["manifest.json", "tokenizer.json"] {
            std::fs::copy(tiny_dir().join(file), dir.join(file)).unwrap();
        }
        let model = std::fs::read(tiny_dir().join("model.onnx")).unwrap();
        std::fs::write(dir.join("model.onnx"), &model[..model.len() / 2]).unwrap();
        let error = ModelManifest::load(&dir).unwrap_err();
        assert!(error.to_string().contains("truncated"), "{error}");
    }

    #[test]
    fn parses_the_shipped_catalog() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/catalog.json");
        let catalog = ModelCatalog::load(&path).unwrap();
        assert_eq!(catalog.default, "all-minilm-l6-v2");
        assert_eq!(catalog.models[&catalog.default].dim, 384);
        assert!(ModelCatalog::parse(r#"{"format":1,"default":"x","models":{}}"#).is_err());
    }

    /// The default model when it was fetched (`models/fetch`, or
    /// ATTUNE_DEFAULT_MODEL); required when ATTUNE_REQUIRE_DEFAULT_MODEL=1,
    /// as in tests/run (the same rule as the integration tests' support).
    pub(crate) fn default_model() -> Option<PathBuf> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::var_os("ATTUNE_DEFAULT_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("models/cache/all-minilm-l6-v2"));
        let present = dir.join("manifest.json").is_file();
        let required = std::env::var("ATTUNE_REQUIRE_DEFAULT_MODEL").as_deref() == Ok("1");
        assert!(present || !required, "the default model is required but {} is missing", dir.display());
        present.then_some(dir)
    }

    pub(crate) fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("attune-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
