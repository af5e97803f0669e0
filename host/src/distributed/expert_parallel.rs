//! Expert parallelism (Megatron-Core's all-to-all token dispatcher): each MoE layer's
//! routed experts are split over the ranks of an expert-parallel group, in contiguous
//! blocks. A layer gathers its tokens' routed rows grouped by expert (as one process
//! does), sends each rank the rows of its experts by all-to-all with per-peer counts (the
//! per-expert counts go first), runs its own experts on what arrived — one block per
//! source rank, so every expert multiplies exactly the rows one process would have
//! multiplied for that rank's tokens — and sends the outputs back for the combine. Both
//! all-to-alls are candle ops whose backward is the all-to-all the other way, so the
//! gradients of the rows follow them home and the expert weights' gradients stay with
//! their owners.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use candle_core::{CpuStorage, CustomOp1, DType, Layout as TensorLayout, Result, Shape, Tensor};

use super::Communicator;
use crate::model::ffn::Ffn;
use crate::moe::dispatcher::{Dispatch, LocalDispatch, LocalDispatcher, TokenDispatcher};
use crate::moe::experts::ExpertCompute;
use crate::moe::selection::Selection;

/// The op's name in errors.
const OP: &str = "expert-parallel all-to-all";

fn comm_err(e: impl fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{OP}: {e}"))
}

/// Dispatch over an expert-parallel group: rank `r` of the group computes the experts
/// `r·E/ep .. (r+1)·E/ep` of every layer.
pub struct ExpertParallelDispatcher {
    group: Arc<dyn Communicator>,
    /// Nanoseconds spent in the all-to-alls (forward and backward) since the last
    /// [`Self::take_time`].
    spent: Arc<AtomicU64>,
}

impl ExpertParallelDispatcher {
    /// Split every layer's experts over the ranks of `group` (the expert-parallel group).
    pub fn new(group: Arc<dyn Communicator>) -> Self {
        ExpertParallelDispatcher { group, spent: Arc::new(AtomicU64::new(0)) }
    }

    /// The time spent in the all-to-alls since the last call (for the step's `comm_ms`).
    pub fn take_time(&self) -> Duration {
        Duration::from_nanos(self.spent.swap(0, Ordering::Relaxed))
    }

    /// The experts of a layer of `experts` that rank `rank` of the group computes.
    fn experts_of(&self, rank: usize, experts: usize) -> Result<Range<usize>> {
        let ep = self.group.size();
        if !experts.is_multiple_of(ep) {
            candle_core::bail!("{OP}: {experts} experts do not split evenly over {ep} expert-parallel ranks");
        }
        let per = experts / ep;
        Ok(rank * per..(rank + 1) * per)
    }
}

impl fmt::Debug for ExpertParallelDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExpertParallelDispatcher(rank {} of {})", self.group.rank(), self.group.size())
    }
}

impl TokenDispatcher for ExpertParallelDispatcher {
    fn name(&self) -> &'static str {
        "expert-parallel"
    }

    fn dispatch(&self, x: &Tensor, selection: &Selection) -> Result<Box<dyn Dispatch>> {
        let local = LocalDispatcher.gather(x, selection)?;
        let ep = self.group.size();
        let experts = selection.counts.len();
        let per = experts / ep.max(1);
        let mine = self.experts_of(self.group.rank(), experts)?;
        // Counts first: every peer learns how many rows of each of its experts come from
        // here (f32 is exact for counts below 2^24).
        if let Some(&big) = selection.counts.iter().find(|&&c| c >= 1 << 24) {
            candle_core::bail!("{OP}: {big} rows for one expert exceed what the count exchange carries");
        }
        let counts: Vec<f32> = selection.counts.iter().map(|&c| c as f32).collect();
        let (received, _) = self.group.all_to_all(&counts, &vec![per; ep]).map_err(comm_err)?;
        let arriving: Vec<Vec<usize>> = received.chunks(per.max(1)).map(|c| c.iter().map(|&n| n as usize).collect()).collect();
        let sending: Vec<usize> = (0..ep).map(|p| selection.counts[p * per..(p + 1) * per].iter().sum()).collect();
        Ok(Box::new(ExpertParallelDispatch { group: self.group.clone(), spent: self.spent.clone(), local, mine, sending, arriving }))
    }

    fn keeps_rows_local(&self) -> bool {
        false
    }
}

/// One layer's rows on their way to the experts' ranks.
struct ExpertParallelDispatch {
    group: Arc<dyn Communicator>,
    spent: Arc<AtomicU64>,
    /// The local tokens' rows grouped by expert, and the combine back to the tokens.
    local: LocalDispatch,
    /// The experts this rank computes.
    mine: Range<usize>,
    /// Rows sent to each peer (those of its experts).
    sending: Vec<usize>,
    /// Rows of each of this rank's experts that arrive from each peer.
    arriving: Vec<Vec<usize>>,
}

impl Dispatch for ExpertParallelDispatch {
    fn run_experts(&self, compute: &dyn ExpertCompute, experts: &[Ffn]) -> Result<Tensor> {
        let rows = self.local.rows();
        let dtype = rows.dtype();
        let arrived_rows: Vec<usize> = self.arriving.iter().map(|c| c.iter().sum()).collect();
        let there = AllToAllRows { group: self.group.clone(), spent: self.spent.clone(), send: self.sending.clone(), recv: arrived_rows.clone() };
        let arrived = rows.to_dtype(DType::F32)?.contiguous()?.apply_op1(there)?.to_dtype(dtype)?;
        let mine = experts.get(self.mine.clone()).ok_or_else(|| comm_err(format!("experts {:?} of a layer with {}", self.mine, experts.len())))?;
        // One block per source rank: each expert multiplies the rows of one rank's
        // tokens at a time, the same products one process computes for them. An empty
        // block stays a slice of what arrived, so every rank's backward reaches both
        // all-to-alls.
        let mut outputs = Vec::with_capacity(arrived_rows.len());
        let mut at = 0;
        for (n, counts) in arrived_rows.iter().zip(&self.arriving) {
            let block = arrived.narrow(0, at, *n)?;
            outputs.push(if *n == 0 { block } else { compute.forward(&block, counts, mine)? });
            at += n;
        }
        let computed = Tensor::cat(&outputs, 0)?;
        let back = AllToAllRows { group: self.group.clone(), spent: self.spent.clone(), send: arrived_rows, recv: self.sending.clone() };
        computed.to_dtype(DType::F32)?.contiguous()?.apply_op1(back)?.to_dtype(dtype)
    }

    fn combine(&self, expert_rows: &Tensor, gates: &Tensor) -> Result<Tensor> {
        let out = self.local.combine(expert_rows, gates)?;
        if expert_rows.dim(0)? > 0 {
            return Ok(out);
        }
        // No local token was routed (all dropped): the output still depends on the rows
        // that came back, so this rank's backward takes part in the all-to-alls too.
        out.broadcast_add(&expert_rows.sum_all()?.to_dtype(out.dtype())?)
    }
}

/// Rows of an `[N, d]` f32 matrix to the ranks of `group`: `send[p]` consecutive rows to
/// peer `p`; the result is the `recv[p]` rows from every peer, in rank order. Its
/// backward sends the gradient rows the other way.
struct AllToAllRows {
    group: Arc<dyn Communicator>,
    spent: Arc<AtomicU64>,
    send: Vec<usize>,
    recv: Vec<usize>,
}

impl CustomOp1 for AllToAllRows {
    fn name(&self) -> &'static str {
        "all-to-all-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &TensorLayout) -> Result<(CpuStorage, Shape)> {
        let &[n, d] = l.dims() else { candle_core::bail!("{OP}: rows of shape {:?}", l.dims()) };
        if n != self.send.iter().sum::<usize>() {
            candle_core::bail!("{OP}: {n} rows, but {:?} are to be sent", self.send);
        }
        let values = match s {
            CpuStorage::F32(v) => &v[l.start_offset()..l.start_offset() + n * d],
            _ => candle_core::bail!("{OP}: rows are not f32"),
        };
        let counts: Vec<usize> = self.send.iter().map(|&r| r * d).collect();
        let clock = Instant::now();
        let (received, got) = self.group.all_to_all(values, &counts).map_err(comm_err)?;
        self.spent.fetch_add(clock.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let expected: Vec<usize> = self.recv.iter().map(|&r| r * d).collect();
        if got != expected {
            candle_core::bail!("{OP}: received {got:?} values from the peers, expected {expected:?}");
        }
        let rows = self.recv.iter().sum::<usize>();
        Ok((CpuStorage::F32(received), Shape::from((rows, d))))
    }

    fn bwd(&self, _rows: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = AllToAllRows { group: self.group.clone(), spent: self.spent.clone(), send: self.recv.clone(), recv: self.send.clone() };
        Ok(Some(grad.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}
