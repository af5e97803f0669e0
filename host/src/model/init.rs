//! Fresh weights for a model shape: training from scratch, tests and benchmarks.
//! Deterministic from a seed (the same seed gives the same bytes on every machine).

use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::error::ModelError;
use super::params::{ParamSource, ParamStore};
use super::transformer::Transformer;

/// How to initialise.
#[derive(Clone, Copy, Debug)]
pub struct InitOptions {
    /// Standard deviation of the normal distribution for weight matrices.
    pub std: f64,
    /// Seed of the generator.
    pub seed: u64,
    /// Element type of the weights.
    pub dtype: DType,
}

/// Weights for `config`: matrices from N(0, std²), norm weights 1, biases 0 (the usual
/// Llama initialisation).
pub fn random_params(config: &ModelConfig, options: InitOptions) -> Result<ParamStore, ModelError> {
    let mut init = Initialiser { rng: SplitMix64(options.seed), options, store: ParamStore::new() };
    Transformer::build(config, &mut init)?;
    Ok(init.store)
}

struct Initialiser {
    rng: SplitMix64,
    options: InitOptions,
    store: ParamStore,
}

impl ParamSource for Initialiser {
    fn tensor(&mut self, name: &str, dims: &[usize]) -> Result<Tensor, ModelError> {
        let n: usize = dims.iter().product();
        let values: Vec<f64> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| self.rng.normal() * self.options.std).collect()
        };
        let t = Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(self.options.dtype)?;
        self.store.insert(name, t.clone(), None);
        Ok(t)
    }
}

/// SplitMix64 with Box–Muller normals: small, fast and identical everywhere.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
