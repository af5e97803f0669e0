//! All routed experts of a layer over the grouped rows, in f32 on the BLAS, as two
//! candle ops: the `[gate | up]` products, then the down products of the SwiGLU gate
//! of their rows, each a grouped linear op (one weight per expert's block of rows,
//! `grouped_linear`). The gate's output is made inside the down op, in its forward and
//! again in its backward, so the graph never keeps it (`[rows, f]`, 12.6 MB a layer at a
//! real model's shape). (Mixed precision runs all of it chunk by chunk in one op,
//! [`super::fused_experts`].) The experts' weights enter concatenated (`[E·out, in]`);
//! the backward of the concatenation hands each expert its rows of the gradient.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::matmul::{BlasLibrary, Precision, RowInput, grouped_linear};
use super::released_weights::WeightParts;

/// `FFN_e(rows_e)` in f32 for every expert's block of `routed` (`counts[e]` rows each,
/// in order), with every expert of width `f`; f32 tensors on the CPU.
///
/// The weights come as their parts (`[g₀, u₀, g₁, u₁, …]` and `[down₀, down₁, …]`):
/// each concatenation is released after its product and rebuilt in the backward
/// ([`crate::cpu::released_weights`]), so the graph keeps no copy of the weights.
pub fn grouped_experts(library: Arc<BlasLibrary>, routed: &Tensor, counts: &[usize], gate_up: WeightParts, down: WeightParts) -> Result<Tensor> {
    let (gate_up_cat, down_cat) = (gate_up.concatenated()?, down.concatenated()?);
    let (e, d) = (counts.len(), gate_up_cat.dim(1)?);
    let width = gate_up_cat.dim(0)? / (2 * e).max(1);
    let gate_up_rows = grouped_linear(routed, &gate_up_cat.reshape((e, 2 * width, d))?, counts, Precision::F32, library.clone(), Some(gate_up), RowInput::Plain)?;
    grouped_linear(&gate_up_rows, &down_cat.reshape((e, d, width))?, counts, Precision::F32, library, Some(down), RowInput::PackedSwiGlu)
}
