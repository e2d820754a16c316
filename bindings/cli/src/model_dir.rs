//! Where the model lives when `--model` is not given.

use std::path::{Path, PathBuf};

use attune::{Error, ModelCatalog};

/// `--model`/`ATTUNE_MODEL` when given; otherwise the catalog's default model
/// in the `models/` cache (`ATTUNE_MODELS_DIR`, else this checkout's `models/`).
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    let models = std::env::var_os("ATTUNE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let catalog = ModelCatalog::load(&models.join("catalog.json"))?;
    Ok(models.join("cache").join(&catalog.default))
}
