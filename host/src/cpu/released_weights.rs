//! The experts' weights concatenated for one op (`[E·out, in]`, each expert's block
//! above the next), held only while the op's forward runs. The concatenation is a node
//! of the graph, so the graph would keep its values until the backward: at a real
//! model's shape that was 42 MB a layer, a third of what an MoE layer keeps, copies of
//! weights the model holds anyway. After the forward the values are released (the node
//! keeps its shape and its place in the graph, which is all the concatenation's own
//! backward uses) and the op's backward concatenates the parts again, the same bytes:
//! the weights do not change between a step's forward and its backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor};

use super::op_io::with_f32;

/// The per-expert weights an op's weight operand was concatenated from, in order.
#[derive(Clone, Debug)]
pub struct WeightParts {
    parts: Vec<Tensor>,
}

impl WeightParts {
    /// Parts to concatenate along their first dimension (each f32 on the CPU).
    pub fn new(parts: Vec<Tensor>) -> Self {
        Self { parts }
    }

    /// The concatenation as a graph node: the op's input, whose gradient the
    /// concatenation's backward hands back to each part.
    pub fn concatenated(&self) -> Result<Tensor> {
        Tensor::cat(&self.parts, 0)
    }

    /// The concatenated values rounded to bf16, converted part by part (no f32
    /// concatenation is made).
    pub fn bf16_values(&self, op: &str) -> Result<Vec<u16>> {
        let mut values = Vec::new();
        for part in &self.parts {
            with_f32(op, "an expert's weights", part, |v| {
                values.extend_from_slice(&super::matmul::to_bf16_bits(v));
                Ok(())
            })?;
        }
        Ok(values)
    }

    /// Runs `f` on the concatenated values, built again from the parts.
    pub fn with_values<R>(&self, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
        let mut values = Vec::new();
        for part in &self.parts {
            with_f32(op, "an expert's weights", part, |v| {
                values.extend_from_slice(v);
                Ok(())
            })?;
        }
        f(&values)
    }
}

/// Frees the values of `t` (all of its storage, which views of it share) once the op
/// that read them has run; reading them afterwards is an error of the caller, so only an
/// op that gets its weights from [`WeightParts::with_values`] in its backward may take
/// a released operand.
pub fn release(t: &Tensor) -> Result<()> {
    t.inplace_op1(&Release)
}

/// The in-place op behind [`release`].
struct Release;

impl InplaceOp1 for Release {
    fn name(&self) -> &'static str {
        "release-values"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, _: &Layout) -> Result<()> {
        match storage {
            CpuStorage::F32(values) => *values = Vec::new(),
            other => candle_core::bail!("releasing the values of a {:?} tensor: only f32 weights are released", other.dtype()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::{WeightParts, release};

    /// The parts concatenate to what `cat` makes; a released node keeps its shape and
    /// its graph (the parts still get their gradients through it), and its values are
    /// gone from every view.
    #[test]
    fn released_values_are_rebuilt_from_the_parts_and_the_graph_still_reaches_them() {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::arange(0f32, 6.0, &dev).unwrap().reshape((2, 3)).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::arange(6f32, 9.0, &dev).unwrap().reshape((1, 3)).unwrap()).unwrap();
        let parts = WeightParts::new(vec![a.as_tensor().clone(), b.as_tensor().clone()]);
        let cat = parts.concatenated().unwrap();
        let view = cat.reshape((1, 3, 3)).unwrap();
        let expected: Vec<f32> = (0..9).map(|x| x as f32).collect();
        assert_eq!(view.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected);
        let weighted = (&cat * 2.0).unwrap().sum_all().unwrap();
        release(&view).unwrap();
        assert_eq!(cat.dims(), &[3, 3]);
        let (storage, _) = cat.storage_and_layout();
        assert!(matches!(&*storage, candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) if v.is_empty()));
        drop(storage);
        assert_eq!(parts.with_values("test", |v| Ok(v.to_vec())).unwrap(), expected);
        // `cat`'s backward does not read its values: each part gets its gradient.
        let grads = weighted.backward().unwrap();
        assert_eq!(grads.get(a.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2.0; 6]);
        assert_eq!(grads.get(b.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2.0; 3]);
    }
}
