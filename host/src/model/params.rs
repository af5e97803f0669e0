//! The model's weights by name: what checkpoints are read into and written from, what
//! the optimizer updates, and what the model's layers hold views of.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor, Var};

use super::checkpoint::names::to_hf;
use super::config::Architecture;
use super::error::ModelError;

/// Named weight tensors, each remembering the file it came from (for error messages).
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    tensors: BTreeMap<String, Tensor>,
    origin: BTreeMap<String, PathBuf>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace a tensor; `origin` is the file it was read from, if any.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor, origin: Option<&Path>) {
        let name = name.into();
        if let Some(path) = origin {
            self.origin.insert(name.clone(), path.to_path_buf());
        }
        self.tensors.insert(name, tensor);
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Remove the tensor called `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.origin.remove(name);
        self.tensors.remove(name)
    }

    /// The file a tensor was read from, or `<memory>` for one made in this process.
    pub fn origin(&self, name: &str) -> PathBuf {
        self.origin.get(name).cloned().unwrap_or_else(|| PathBuf::from("<memory>"))
    }

    /// All tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the store holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.tensors.values().map(Tensor::elem_count).sum()
    }

    /// Refuse weights holding NaN or infinity, naming the first such tensor and the file
    /// it came from: training on them only spreads the damage, and a checkpoint or
    /// Hugging Face model with them is corrupt.
    pub fn check_finite(&self) -> Result<(), ModelError> {
        for (name, t) in &self.tensors {
            if !all_finite(t)? {
                return Err(ModelError::Config { path: self.origin(name), reason: format!("tensor `{name}` holds NaN or infinite values") });
            }
        }
        Ok(())
    }

    /// The same weights as trainable variables: the model built from the result records
    /// the operations that gradients flow back through.
    pub fn trainable(&self) -> Result<ParamStore, ModelError> {
        self.trainable_on(&candle_core::Device::Cpu)
    }

    /// [`ParamStore::trainable`] with the weights moved to `device` (where the model then
    /// computes: it follows its embedding's device).
    pub fn trainable_on(&self, device: &candle_core::Device) -> Result<ParamStore, ModelError> {
        let mut out = ParamStore { tensors: BTreeMap::new(), origin: self.origin.clone() };
        for (name, t) in &self.tensors {
            out.tensors.insert(name.clone(), Var::from_tensor(&t.to_device(device)?)?.as_tensor().clone());
        }
        Ok(out)
    }

    /// The same weights converted to `dtype` (a fresh copy, not trainable).
    pub fn to_dtype(&self, dtype: DType) -> Result<ParamStore, ModelError> {
        let mut out = ParamStore { tensors: BTreeMap::new(), origin: self.origin.clone() };
        for (name, t) in &self.tensors {
            out.tensors.insert(name.clone(), t.detach().to_dtype(dtype)?.copy()?);
        }
        Ok(out)
    }
}

/// Where the layers being built get their tensors: read from a store (a checkpoint) or
/// freshly initialised. One trait, so tensor names and shapes are spelled once, in the
/// model's constructor.
pub trait ParamSource {
    /// The tensor `name` of shape `dims`.
    fn tensor(&mut self, name: &str, dims: &[usize]) -> Result<Tensor, ModelError>;
}

/// Hands tensors to the layers being built, checks their shapes, and afterwards reports
/// any tensor no layer asked for.
pub struct ParamReader<'a> {
    store: &'a ParamStore,
    used: BTreeSet<String>,
    looked_in: String,
    architecture: Architecture,
}

impl<'a> ParamReader<'a> {
    /// Read from `store`; `looked_in` names the checkpoint for "missing tensor" errors,
    /// and errors spell tensor names as `architecture`'s files do.
    pub fn new(store: &'a ParamStore, looked_in: impl Into<String>, architecture: Architecture) -> Self {
        Self { store, used: BTreeSet::new(), looked_in: looked_in.into(), architecture }
    }

    fn file_name(&self, name: &str) -> String {
        to_hf(self.architecture, name)
    }

    /// Fail if the store holds tensors nobody asked for: the checkpoint is of a
    /// different shape or family than its config says.
    pub fn finish(self, architecture: &str) -> Result<(), ModelError> {
        let unused: Vec<&String> = self.store.tensors.keys().filter(|n| !self.used.contains(*n)).collect();
        let Some(first) = unused.first() else { return Ok(()) };
        let mut names: Vec<String> = unused.iter().take(5).map(|n| format!("`{}`", self.file_name(n))).collect();
        if unused.len() > 5 {
            names.push(format!("and {} more", unused.len() - 5));
        }
        Err(ModelError::UnexpectedTensors { path: self.store.origin(first), architecture: architecture.to_string(), names: names.join(", ") })
    }
}

impl ParamSource for ParamReader<'_> {
    fn tensor(&mut self, name: &str, dims: &[usize]) -> Result<Tensor, ModelError> {
        let t = self.store.get(name).ok_or_else(|| ModelError::MissingTensor { name: self.file_name(name), looked_in: self.looked_in.clone() })?;
        if t.dims() != dims {
            return Err(ModelError::ShapeMismatch { path: self.store.origin(name), name: self.file_name(name), expected: dims.to_vec(), found: t.dims().to_vec() });
        }
        self.used.insert(name.to_string());
        Ok(t.clone())
    }
}

/// Whether every value of `t` is finite (no NaN, no infinity).
pub fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| x.is_finite()))
}
