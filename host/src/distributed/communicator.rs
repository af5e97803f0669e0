//! The collectives distributed training needs, as one trait: whatever engine carries
//! them (MPI on CPUs, NCCL on GPUs, one process), the trainer calls the same functions,
//! and their results are deterministic for a fixed layout (the engine's reduction order
//! does not change between steps).

/// Why a collective failed.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// The buffers given do not fit the operation (a caller's bug, caught before the
    /// engine sees them).
    #[error("{op}: {reason}")]
    Shape { op: &'static str, reason: String },
    /// The engine reported an error.
    #[error("{op} failed on rank {rank}: {reason}")]
    Engine { op: &'static str, rank: usize, reason: String },
    /// A self-check found a wrong result.
    #[error("collective check on rank {rank}: {op} returned {got}, expected {expected}")]
    Wrong { rank: usize, op: &'static str, got: String, expected: String },
}

/// A group of processes that compute together. Every rank of the group must make the
/// same calls in the same order with buffers of agreeing sizes.
pub trait Communicator: Send + Sync {
    /// This process's index in the group, `0 .. size`.
    fn rank(&self) -> usize;

    /// Processes in the group.
    fn size(&self) -> usize;

    /// What carries the collectives (`"single"`, `"mpi"`, `"nccl"`), for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Sum `values` element-wise over all ranks, in place on every rank, adding in rank
    /// order (`((r0 + r1) + r2) + …`): a job's sums are bit for bit those of one process
    /// accumulating the ranks' parts in order, whatever algorithm the engine prefers.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CommError>;

    /// Sum `values` element-wise over all ranks in f64 (loss sums and counts that must
    /// not lose precision), in place on every rank, in rank order.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), CommError>;

    /// Rank `root`'s `bytes` on every rank (plugin decisions made once, then shared).
    fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CommError>;

    /// Every rank's `mine` (all the same length), concatenated in rank order.
    fn all_gather(&self, mine: &[f32]) -> Result<Vec<f32>, CommError>;

    /// Sum `values` (`size()` equal blocks) over all ranks and keep block `rank()`:
    /// ZeRO-1's gradient step before each rank updates its shard of the moments.
    fn reduce_scatter_sum(&self, values: &[f32]) -> Result<Vec<f32>, CommError>;

    /// Send `send_counts[p]` consecutive values of `send` to rank `p`, receive what every
    /// rank sends here; returns the received values in rank order and how many came
    /// from each rank (counts are exchanged first, as Megatron's all-to-all dispatcher
    /// does).
    fn all_to_all(&self, send: &[f32], send_counts: &[usize]) -> Result<(Vec<f32>, Vec<usize>), CommError>;

    /// Wait until every rank reaches this point.
    fn barrier(&self) -> Result<(), CommError>;

    /// The group of the ranks that pass the same `color`, ordered by `key` (a collective
    /// call: every rank of this group makes it): the expert-parallel and
    /// expert-data-parallel groups of a layout.
    fn split(&self, color: usize, key: usize) -> Result<std::sync::Arc<dyn Communicator>, CommError>;

    /// End every process of the job with `code` (a rank that cannot go on must not leave
    /// the others waiting in a collective).
    fn abort(&self, code: i32) -> !;
}

/// Run every collective on known inputs and check the results on this rank: what
/// `recast distributed check` runs under a launcher to prove an engine works.
pub fn check_collectives(comm: &dyn Communicator) -> Result<Vec<String>, CommError> {
    let (rank, size) = (comm.rank(), comm.size());
    let wrong = |op, got: String, expected: String| CommError::Wrong { rank, op, got, expected };
    let mut done = Vec::new();

    let mut values = vec![rank as f32 + 1.0, 2.0];
    comm.all_reduce_sum(&mut values)?;
    let expected = vec![(size * (size + 1) / 2) as f32, 2.0 * size as f32];
    if values != expected {
        return Err(wrong("all-reduce", format!("{values:?}"), format!("{expected:?}")));
    }
    done.push(format!("all-reduce: {values:?}"));

    let mut sums = vec![0.1f64 * rank as f64];
    comm.all_reduce_sum_f64(&mut sums)?;
    let expected = (0..size).map(|r| 0.1 * r as f64).sum::<f64>();
    if (sums[0] - expected).abs() > 1e-12 {
        return Err(wrong("all-reduce (f64)", format!("{}", sums[0]), format!("{expected}")));
    }
    done.push(format!("all-reduce f64: {}", sums[0]));

    let mut bytes = if rank == 0 { b"from rank 0".to_vec() } else { Vec::new() };
    comm.broadcast(0, &mut bytes)?;
    if bytes != b"from rank 0" {
        return Err(wrong("broadcast", format!("{:?}", String::from_utf8_lossy(&bytes)), "\"from rank 0\"".into()));
    }
    done.push("broadcast: 11 bytes from rank 0".into());

    let gathered = comm.all_gather(&[rank as f32, -(rank as f32)])?;
    let expected: Vec<f32> = (0..size).flat_map(|r| [r as f32, -(r as f32)]).collect();
    if gathered != expected {
        return Err(wrong("all-gather", format!("{gathered:?}"), format!("{expected:?}")));
    }
    done.push(format!("all-gather: {gathered:?}"));

    // Block b of every rank holds b + rank; the sum of block `rank` is size·rank + Σ r.
    let blocks: Vec<f32> = (0..size).flat_map(|b| [(b + rank) as f32; 2]).collect();
    let mine = comm.reduce_scatter_sum(&blocks)?;
    let expected = vec![(size * rank + size * (size - 1) / 2) as f32; 2];
    if mine != expected {
        return Err(wrong("reduce-scatter", format!("{mine:?}"), format!("{expected:?}")));
    }
    done.push(format!("reduce-scatter: {mine:?}"));

    // Rank r sends p + 1 copies of 100·r + p to rank p.
    let send_counts: Vec<usize> = (0..size).map(|p| p + 1).collect();
    let send: Vec<f32> = (0..size).flat_map(|p| vec![(100 * rank + p) as f32; p + 1]).collect();
    let (received, counts) = comm.all_to_all(&send, &send_counts)?;
    let expected: Vec<f32> = (0..size).flat_map(|r| vec![(100 * r + rank) as f32; rank + 1]).collect();
    if received != expected || counts != vec![rank + 1; size] {
        return Err(wrong("all-to-all", format!("{received:?} (counts {counts:?})"), format!("{expected:?}")));
    }
    done.push(format!("all-to-all: {received:?}"));

    // Even and odd ranks form two groups; each sums its members' ranks.
    let group = comm.split(rank % 2, rank)?;
    let mut mine = vec![rank as f32];
    group.all_reduce_sum(&mut mine)?;
    let expected = (0..size).filter(|r| r % 2 == rank % 2).sum::<usize>() as f32;
    if mine[0] != expected || group.rank() != rank / 2 {
        return Err(wrong("split", format!("sum {} as rank {} of the group", mine[0], group.rank()), format!("sum {expected} as rank {}", rank / 2)));
    }
    done.push(format!("split: rank {} of {} in the {} group", group.rank(), group.size(), if rank % 2 == 0 { "even" } else { "odd" }));
    comm.barrier()?;
    done.push("barrier".into());
    Ok(done)
}
