//! The ONNX Runtime backend (cargo feature `ort`). The library is loaded at
//! run time from `libonnxruntime` (path from the options or `ORT_DYLIB_PATH`);
//! nothing is downloaded at build time.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::Engine;
use crate::encoder::batching::TokenBatch;
use crate::error::{Error, Result};
use crate::model::ModelManifest;

/// ONNX Runtime allows one environment per process; the first path wins.
static ENVIRONMENT: OnceLock<std::result::Result<(PathBuf, Environment), String>> = OnceLock::new();

pub(crate) struct OrtEngine {
    // `Session::run` takes `&mut self`; concurrent callers take turns.
    session: Mutex<Session>,
    inputs: Vec<(String, Role)>,
    output: String,
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Ids,
    Mask,
    TypeIds,
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable { backend: "ort".into(), reason: reason.into() }
}

fn environment(library: Option<&Path>) -> Result<&'static Environment> {
    let requested = match library {
        Some(path) => path.to_path_buf(),
        None => std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).ok_or_else(|| {
            unavailable("set ORT_DYLIB_PATH to libonnxruntime (see docs/encoder.md: it ships in the onnxruntime wheel)")
        })?,
    };
    let entry = ENVIRONMENT.get_or_init(|| {
        // ort panics inside dlopen on a bad path, so check it first.
        if !requested.is_file() {
            return Err(format!("{} does not exist", requested.display()));
        }
        let builder = ort::init_from(&requested).map_err(|e| format!("{}: {e}", requested.display()))?;
        let environment = builder.with_name("attune").build().map_err(|e| e.to_string())?;
        Ok((requested.clone(), environment))
    });
    match entry {
        Ok((loaded, environment)) if *loaded == requested => Ok(environment),
        Ok((loaded, _)) => Err(unavailable(format!(
            "ONNX Runtime is already loaded from {}; one library per process",
            loaded.display()
        ))),
        Err(reason) => Err(unavailable(reason.clone())),
    }
}

impl OrtEngine {
    pub fn load(manifest: &ModelManifest, threads: usize, library: Option<&Path>) -> Result<Self> {
        let path = manifest.model_path();
        if !path.exists() && manifest.compiled.is_some() {
            return Err(Error::BackendUnavailable {
                backend: "ort".into(),
                reason: format!(
                    "{} holds a compiled model for tract only, no ONNX file",
                    manifest.directory().display()
                ),
            });
        }
        if manifest.precision() != crate::Precision::F32 {
            return Err(Error::BackendUnavailable {
                backend: "ort".into(),
                reason: format!(
                    "{} holds a graph compiled to {} for tract: its features are tract's, not the ONNX file's",
                    manifest.directory().display(),
                    manifest.precision().name()
                ),
            });
        }
        let environment = environment(library)?;
        let failed = |e: &dyn std::fmt::Display| Error::ModelLoad { path: path.clone(), reason: e.to_string() };
        let builder = Session::builder(environment).map_err(|e| failed(&e))?;
        let builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| failed(&e))?;
        let builder = builder.with_intra_threads(threads.max(1)).map_err(|e| failed(&e))?;
        let builder = builder.with_inter_threads(1).map_err(|e| failed(&e))?;
        // Spinning workers halve throughput when the other core is busy.
        let mut builder = builder.with_intra_op_spinning(false).map_err(|e| failed(&e))?;
        let session = builder.commit_from_file(&path).map_err(|e| failed(&e))?;

        let names = &manifest.inputs;
        let mut inputs = Vec::new();
        for outlet in session.inputs() {
            let name = outlet.name();
            let role = if name == names.input_ids {
                Role::Ids
            } else if name == names.attention_mask {
                Role::Mask
            } else if Some(name) == names.token_type_ids.as_deref() {
                Role::TypeIds
            } else {
                return Err(Error::ModelMismatch(format!(
                    "the model has input {name:?}, which the manifest does not name"
                )));
            };
            inputs.push((name.to_string(), role));
        }
        let expected = [Some(&names.input_ids), Some(&names.attention_mask), names.token_type_ids.as_ref()];
        for name in expected.into_iter().flatten() {
            if !inputs.iter().any(|(n, _)| n == name) {
                return Err(Error::ModelMismatch(format!("the model has no input {name:?}")));
            }
        }
        if !session.outputs().iter().any(|o| o.name() == manifest.output) {
            return Err(Error::ModelMismatch(format!("the model has no output {:?}", manifest.output)));
        }
        Ok(Self { session: Mutex::new(session), inputs, output: manifest.output.clone() })
    }
}

impl Engine for OrtEngine {
    fn run(&self, batch: &TokenBatch, pool: &mut dyn FnMut(&[f32], usize) -> Result<()>) -> Result<()> {
        let shape = [batch.rows, batch.seq];
        let failed = |e: ort::Error| Error::Inference(e.to_string());
        let mut values = Vec::with_capacity(self.inputs.len());
        for (name, role) in &self.inputs {
            let data = match role {
                Role::Ids => &batch.ids,
                Role::Mask => &batch.mask,
                Role::TypeIds => &batch.type_ids,
            };
            let tensor = TensorRef::from_array_view((shape, data.as_slice())).map_err(failed)?;
            values.push((name.as_str(), tensor));
        }
        let mut session = self.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session.run(values).map_err(failed)?;
        let (dims, data) = outputs[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::ModelMismatch(format!("output is not an f32 tensor: {e}")))?;
        let rows = i64::try_from(batch.rows).unwrap_or(-1);
        let seq = i64::try_from(batch.seq).unwrap_or(-1);
        if dims.len() != 3 || dims[0] != rows || dims[1] != seq || dims[2] <= 0 {
            return Err(Error::ModelMismatch(format!(
                "output shape {dims:?} is not [batch {rows}, sequence {seq}, width]"
            )));
        }
        pool(data, usize::try_from(dims[2]).unwrap_or(0))
    }
}
