//! All routed experts of a layer over the grouped rows, on the BLAS. In f32, three
//! candle ops: the `[gate | up]` products and the down products as grouped linear ops
//! (one weight per expert's block of rows, `grouped_linear`) and the SwiGLU gate
//! between them. In mixed precision, one op that runs the three chunk by chunk
//! (`FusedExperts`). The experts' weights enter concatenated (`[E·out, in]`); the
//! backward of `cat` hands each expert its rows of the gradient.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused_experts::FusedExperts;
use crate::model::ffn::Ffn;
use crate::model::matmul::{self, ActiveMatmul, Precision, fully_written, grouped_linear};
use crate::model::op_inputs::{f32_slice, with_f32};
use crate::model::swiglu;

/// The op's name in errors.
const OP: &str = "grouped experts";

/// Elements per parallel chunk of the element-wise gate.
const CHUNK: usize = 1 << 14;

/// `FFN_e(rows_e)` for every expert's block of `routed` (`counts[e]` rows each, in
/// order), or `None` when this path does not apply (no BLAS, not f32 on the CPU, or
/// experts of different widths): the caller then runs the experts one by one.
pub fn experts_forward(routed: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Option<Tensor>> {
    experts_forward_on(&matmul::active(), routed, counts, experts)
}

/// [`experts_forward`] on a given matmul path.
pub fn experts_forward_on(active: &ActiveMatmul, routed: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Option<Tensor>> {
    let Some(library) = active.blas.clone() else { return Ok(None) };
    let Some(first) = experts.first() else { return Ok(None) };
    let width = first.width();
    let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
    let uniform = experts.iter().all(|e| e.width() == width && f32_cpu(&e.gate) && f32_cpu(&e.up) && f32_cpu(&e.down));
    if !uniform || !f32_cpu(routed) || counts.len() != experts.len() || counts.iter().sum::<usize>() != routed.dim(0)? {
        return Ok(None);
    }
    // Each expert's gate and up weights one above the other: one product per expert (or
    // chunk of its rows) gives its `[g | u]`. Concatenated rather than stacked: candle
    // accumulates a gradient into a fresh zero tensor at every level of the graph, and
    // `stack` adds a reshape level per weight.
    let (e, d) = (experts.len(), first.gate.dim(1)?);
    let gate_up = Tensor::cat(&experts.iter().flat_map(|e| [&e.gate, &e.up]).collect::<Vec<_>>(), 0)?;
    let down = Tensor::cat(&experts.iter().map(|e| &e.down).collect::<Vec<_>>(), 0)?;
    if active.precision == Precision::Bf16 {
        return Ok(Some(routed.contiguous()?.apply_op3(&gate_up, &down, FusedExperts::new(counts, library))?));
    }
    let gate_up = grouped_linear(routed, &gate_up.reshape((e, 2 * width, d))?, counts, active.precision, library.clone())?;
    let hidden = gate_up.apply_op1(PackedSwiGlu)?;
    Ok(Some(grouped_linear(&hidden, &down.reshape((e, d, width))?, counts, active.precision, library)?))
}

/// `[g | u]` rows → `silu(g) ⊙ u`.
struct PackedSwiGlu;

impl CustomOp1 for PackedSwiGlu {
    fn name(&self) -> &'static str {
        "packed-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[rows, two_f] = l.dims() else { candle_core::bail!("packed swiglu: shape {:?}", l.dims()) };
        let f = two_f / 2;
        let gu = f32_slice(OP, "gate-up rows", s, l)?;
        let rows_per_chunk = (CHUNK / f.max(1)).max(1);
        // SAFETY: every row of the output is written from its `[g | u]` row.
        let out = unsafe {
            fully_written::<candle_core::Error>(rows * f, |out| {
                out.par_chunks_mut(rows_per_chunk * f).zip(gu.par_chunks(rows_per_chunk * two_f)).for_each(|(o, gu)| {
                    for (o, gu) in o.chunks_exact_mut(f).zip(gu.chunks_exact(two_f)) {
                        let (g, u) = gu.split_at(f);
                        swiglu::forward_slice(g, u, o);
                    }
                });
                Ok(())
            })?
        };
        Ok((CpuStorage::F32(out), Shape::from((rows, f))))
    }

    fn bwd(&self, gu: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (rows, two_f) = gu.dims2()?;
        let f = two_f / 2;
        let rows_per_chunk = (CHUNK / f.max(1)).max(1);
        // SAFETY: every row's two halves are written by `backward_slice`.
        let dgu = with_f32(OP, "gate-up rows", gu, |gu| {
            with_f32(OP, "gradient", grad, |grad| unsafe {
                fully_written(rows * two_f, |dgu| {
                    dgu.par_chunks_mut(rows_per_chunk * two_f).zip(gu.par_chunks(rows_per_chunk * two_f).zip(grad.par_chunks(rows_per_chunk * f))).for_each(|(dgu, (gu, grad))| {
                        for ((dgu, gu), d) in dgu.chunks_exact_mut(two_f).zip(gu.chunks_exact(two_f)).zip(grad.chunks_exact(f)) {
                            let (dg, du) = dgu.split_at_mut(f);
                            let (g, u) = gu.split_at(f);
                            swiglu::backward_slice(g, u, d, dg, du);
                        }
                    });
                    Ok(())
                })
            })
        })?;
        Ok(Some(Tensor::from_vec(dgu, (rows, two_f), gu.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Tensor, Var};

    use super::experts_forward_on;
    use crate::model::ffn::Ffn;
    use crate::model::init::SplitMix64;
    use crate::model::matmul::{ActiveMatmul, Precision, library};
    use crate::model::test_tensors::{randn_var, relative_gap};

    /// Grouped experts against each expert run alone (candle's matmul), forward and every
    /// gradient, with an expert that gets no rows; few experts (each product split over
    /// the threads) and many (experts in parallel); experts of several chunks of rows
    /// (the mixed-precision op cuts them at 256).
    #[test]
    fn grouped_experts_match_the_experts_one_by_one() {
        check_against_one_by_one(&[7, 0, 65, 3]);
        check_against_one_by_one(&[7, 0, 65, 3, 9, 1, 12, 4, 30, 2, 5, 8, 11, 6, 3, 1]);
        check_against_one_by_one(&[300, 0, 777, 1]);
    }

    fn check_against_one_by_one(counts: &[usize]) {
        let lib = match library().expect("RECAST_BLAS loads") {
            Some(lib) => lib,
            None => {
                assert!(std::env::var("RECAST_REQUIRE_BLAS").as_deref() != Ok("1"), "RECAST_REQUIRE_BLAS=1 but no BLAS library loads");
                eprintln!("no BLAS library: skipped");
                return;
            }
        };
        let (d, f) = (24, 40);
        let rows: usize = counts.iter().sum();
        let mut rng = SplitMix64(17);
        let weights: Vec<[Var; 3]> = counts.iter().map(|_| [randn_var(&mut rng, &[f, d], 0.3), randn_var(&mut rng, &[f, d], 0.3), randn_var(&mut rng, &[d, f], 0.3)]).collect();
        let experts: Vec<Ffn> = weights.iter().map(|[g, u, w]| Ffn { gate: g.as_tensor().clone(), up: u.as_tensor().clone(), down: w.as_tensor().clone() }).collect();
        let x = randn_var(&mut rng, &[rows, d], 1.0);
        let r = randn_var(&mut rng, &[rows, d], 1.0);
        let run = |out: Tensor| {
            let grads = (out.clone() * r.as_tensor()).expect("mul").sum_all().expect("sum").backward().expect("backward");
            let mut all = vec![out, grads.get(&x).expect("dx").clone()];
            for (e, w) in weights.iter().enumerate() {
                for v in w {
                    all.push(grads.get(v).cloned().unwrap_or_else(|| v.as_tensor().zeros_like().expect("zeros")).detach());
                    assert!(counts[e] == 0 || grads.get(v).is_some());
                }
            }
            all
        };
        let mut start = 0;
        let mut pieces = Vec::new();
        for (expert, &n) in experts.iter().zip(counts) {
            if n > 0 {
                let rows = x.as_tensor().narrow(0, start, n).expect("narrow");
                pieces.push(
                    crate::model::matmul::linear_on(
                        &ActiveMatmul { precision: Precision::F32, blas: None },
                        &(rows.matmul(&expert.gate.t().expect("t")).expect("g").silu().expect("silu") * rows.matmul(&expert.up.t().expect("t")).expect("u")).expect("mul"),
                        &expert.down,
                    )
                    .expect("down"),
                );
            }
            start += n;
        }
        let reference = run(Tensor::cat(&pieces, 0).expect("cat"));
        for (precision, tolerance) in [(Precision::F32, 1e-5), (Precision::Bf16, 3e-2)] {
            let path = ActiveMatmul { precision, blas: Some(lib.clone()) };
            let grouped = run(experts_forward_on(&path, x.as_tensor(), counts, &experts).expect("grouped").expect("the BLAS path applies"));
            for (i, (a, b)) in grouped.iter().zip(&reference).enumerate() {
                let g = relative_gap(a, b);
                assert!(g < tolerance, "{} experts, {precision:?}: output {i} (0 = forward, 1 = dx, then gate/up/down per expert) is {g} from the reference", counts.len());
            }
        }
    }
}
