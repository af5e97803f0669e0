//! Moving rows between tokens and their routed copies on the CPU: the gather of token
//! rows into expert order, and the gate-weighted sum back to tokens, as two candle ops
//! whose backwards are each other's direction. Composed from candle ops these were an
//! `index_select`, a broadcast multiply, a zero-filled `[T, d]` target and an
//! `index_add`, each one pass over memory and the adds on one thread; here each
//! direction is one parallel pass, reading by token so no two threads write a row.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::matmul::fully_written_by;
use crate::cpu::op_io::{f32_slice, with_f32};

/// The op's name in errors.
const OP: &str = "token rows";

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Which routed rows belong to which token, both ways.
#[derive(Clone, Debug)]
pub(crate) struct TokenRows {
    tokens: usize,
    /// Token of each routed row.
    token_of_row: Arc<[u32]>,
    /// Routed rows of token `t`: `rows[offsets[t]..offsets[t + 1]]`, in row order.
    offsets: Arc<[usize]>,
    rows: Arc<[u32]>,
}

impl TokenRows {
    /// The map for routed rows taken from `token_of_row` (each `< tokens`).
    pub(crate) fn new(token_of_row: &[u32], tokens: usize) -> Result<Self> {
        let mut offsets = vec![0usize; tokens + 1];
        for &t in token_of_row {
            let slot = offsets.get_mut(t as usize + 1).ok_or_else(|| candle_core::Error::Msg(format!("{OP}: routed row of token {t}, but there are {tokens} tokens")))?;
            *slot += 1;
        }
        for t in 0..tokens {
            offsets[t + 1] += offsets[t];
        }
        let mut next = offsets.clone();
        let mut rows = vec![0u32; token_of_row.len()];
        for (r, &t) in token_of_row.iter().enumerate() {
            rows[next[t as usize]] = r as u32;
            next[t as usize] += 1;
        }
        Ok(Self { tokens, token_of_row: token_of_row.into(), offsets: offsets.into(), rows: rows.into() })
    }

    fn rows_of(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        self.rows[self.offsets[t]..self.offsets[t + 1]].iter().map(|&r| r as usize)
    }

    /// `out[t] = Σ_{r of t} scale(r) · rows[r]` for every token (`[T, d]`).
    fn sum_by_token(&self, rows: &[f32], d: usize, scale: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(ROWS_PER_TASK * d.max(1)).enumerate().for_each(|(task, out)| {
                for (i, o) in out.chunks_exact_mut(d.max(1)).enumerate() {
                    o.fill(MaybeUninit::new(0.0));
                    // SAFETY: every element was just written.
                    let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
                    for r in self.rows_of(task * ROWS_PER_TASK + i) {
                        let s = scale(r);
                        for (o, &v) in o.iter_mut().zip(&rows[r * d..(r + 1) * d]) {
                            *o += s * v;
                        }
                    }
                }
            })
        };
        // SAFETY: `fill` zeroes every token's row before adding to it.
        unsafe { fully_written_by(self.tokens * d, fill) }
    }
}

/// The routed rows `x[token_of_row[r]]` (`[N, d]`) of `x` (`[T, d]`, f32 on the CPU).
pub(crate) fn gather(x: &Tensor, map: &TokenRows) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gather(map.clone()))
}

/// `out[t] = Σ_{r of t} weights[r] · y[r]` (`[T, d]`) for routed rows `y` (`[N, d]`) and
/// one weight per row (`[N]`), f32 on the CPU; tokens without rows get zeros.
pub(crate) fn combine(y: &Tensor, weights: &Tensor, map: &TokenRows) -> Result<Tensor> {
    y.contiguous()?.apply_op2(&weights.contiguous()?, Combine(map.clone()))
}

struct Gather(TokenRows);

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "gather-token-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let map = &self.0;
        let &[tokens, d] = l.dims() else { candle_core::bail!("{OP}: gather from {:?}", l.dims()) };
        if tokens != map.tokens {
            candle_core::bail!("{OP}: gather from {tokens} tokens with a map for {}", map.tokens);
        }
        let x = f32_slice(OP, "the tokens", s, l)?;
        let n = map.token_of_row.len();
        // SAFETY: every routed row is copied from its token.
        let out = unsafe {
            fully_written_by(n * d, |out| {
                out.par_chunks_mut(ROWS_PER_TASK * d.max(1)).zip(map.token_of_row.par_chunks(ROWS_PER_TASK)).for_each(|(out, tokens)| {
                    for (o, &t) in out.chunks_exact_mut(d.max(1)).zip(tokens) {
                        for (o, &v) in o.iter_mut().zip(&x[t as usize * d..(t as usize + 1) * d]) {
                            o.write(v);
                        }
                    }
                })
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((n, d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = x.dim(1)?;
        let dx = with_f32(OP, "the gradient", grad, |g| Ok(self.0.sum_by_token(g, d, |_| 1.0)))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

struct Combine(TokenRows);

impl CustomOp2 for Combine {
    fn name(&self) -> &'static str {
        "combine-token-rows"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let map = &self.0;
        let (&[n, d], &[n_weights]) = (l1.dims(), l2.dims()) else { candle_core::bail!("{OP}: combine rows {:?} with weights {:?}", l1.dims(), l2.dims()) };
        if n != map.token_of_row.len() || n_weights != n {
            candle_core::bail!("{OP}: combine {n} rows and {n_weights} weights with a map of {} rows", map.token_of_row.len());
        }
        let (y, w) = (f32_slice(OP, "the rows", s1, l1)?, f32_slice(OP, "the weights", s2, l2)?);
        Ok((CpuStorage::F32(map.sum_by_token(y, d, |r| w[r])), Shape::from((map.tokens, d))))
    }

    fn bwd(&self, y: &Tensor, weights: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let map = &self.0;
        let (n, d) = y.dims2()?;
        let (dy, dw) = with_f32(OP, "the rows", y, |y| {
            with_f32(OP, "the weights", weights, |w| {
                with_f32(OP, "the gradient", grad, |g| {
                    let mut dw = vec![0f32; n];
                    // SAFETY: every row is written from its token's gradient.
                    let dy = unsafe {
                        fully_written_by(n * d, |dy| {
                            dy.par_chunks_mut(ROWS_PER_TASK * d.max(1)).zip(dw.par_chunks_mut(ROWS_PER_TASK)).enumerate().for_each(|(task, (dy, dw))| {
                                for (i, (dy, dw)) in dy.chunks_exact_mut(d.max(1)).zip(dw.iter_mut()).enumerate() {
                                    let r = task * ROWS_PER_TASK + i;
                                    let t = map.token_of_row[r] as usize;
                                    let (g, row) = (&g[t * d..(t + 1) * d], &y[r * d..(r + 1) * d]);
                                    let mut dot = 0f32;
                                    for ((o, &g), &v) in dy.iter_mut().zip(g).zip(row) {
                                        o.write(w[r] * g);
                                        dot += g * v;
                                    }
                                    *dw = dot;
                                }
                            })
                        })
                    };
                    Ok((dy, dw))
                })
            })
        })?;
        let dev = y.device();
        Ok((Some(Tensor::from_vec(dy, (n, d), dev)?), Some(Tensor::from_vec(dw, n, dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{TokenRows, combine, gather};
    use crate::model::init::SplitMix64;
    use crate::model::test_tensors::{randn_var, relative_gap};

    /// Gather and combine against candle's `index_select` / broadcast multiply /
    /// `index_add`, forward and gradients, with a token that has no rows and tokens
    /// with several.
    #[test]
    fn gather_and_combine_match_index_select_and_index_add() {
        let (tokens, d) = (70, 9);
        let token_of_row: Vec<u32> = (0..150u32).map(|i| (i * 37 + i / 3) % 69 + 1).collect();
        let map = TokenRows::new(&token_of_row, tokens).expect("map");
        let mut rng = SplitMix64(5);
        let x = randn_var(&mut rng, &[tokens, d], 1.0);
        let w = randn_var(&mut rng, &[token_of_row.len()], 1.0);
        let r = randn_var(&mut rng, &[tokens, d], 1.0);
        let index = Tensor::from_slice(&token_of_row, token_of_row.len(), &Device::Cpu).expect("index");
        let run = |out: Tensor| {
            let grads = (out.clone() * r.as_tensor()).expect("mul").sum_all().expect("sum").backward().expect("backward");
            vec![out, grads.get(&x).expect("dx").clone(), grads.get(&w).expect("dw").clone()]
        };
        // A nonlinearity between the two, so the rows' gradient depends on the rows.
        let ours = run(combine(&gather(x.as_tensor(), &map).expect("gather").sqr().expect("sqr"), w.as_tensor(), &map).expect("combine"));
        let rows = x.as_tensor().index_select(&index, 0).expect("select").sqr().expect("sqr");
        let weighted = rows.broadcast_mul(&w.as_tensor().unsqueeze(1).expect("unsqueeze")).expect("mul");
        let reference = run(x.as_tensor().zeros_like().expect("zeros").index_add(&index, &weighted, 0).expect("index_add"));
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            let g = relative_gap(a, b);
            assert!(g < 1e-6, "output {i} (0 = forward, 1 = dx, 2 = dweights) is {g} from the reference");
        }
        assert!(TokenRows::new(&[3, 70], tokens).is_err(), "a row of a token past the end is refused");
    }
}
