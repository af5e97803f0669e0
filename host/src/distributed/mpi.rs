//! The MPI backend (the `mpi` cargo feature): Open MPI through the `mpi` crate. The
//! launcher (`mpirun`, `srun`) starts the ranks; `MPI_Init` joins them. Collectives are
//! called from the training thread only (MPI's single-thread level).

use std::ops::AddAssign;
use std::sync::Arc;

use mpi::Count;
use mpi::datatype::{Equivalence, Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::{Communicator as _, CommunicatorCollectives as _, Root as _};

use super::communicator::{CommError, Communicator};
use super::launch::LaunchError;

/// Whether this build has the MPI backend.
pub const BUILT: bool = true;

/// An MPI communicator (`MPI_COMM_WORLD` or a group split from it), and the universe
/// that finalizes MPI when the last communicator holding it is dropped (fields drop in
/// order: the communicator is freed first).
pub struct MpiWorld {
    world: SimpleCommunicator,
    _universe: Arc<Universe>,
}

// SAFETY: MPI runs at its single-thread level; Recast calls collectives only from the
// training thread (the plugin watcher and the tensor pools never touch MPI), so the
// handles are never used from two threads at once.
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}

/// Join the job the launcher started.
pub fn open_world() -> Result<Box<dyn Communicator>, LaunchError> {
    let universe = mpi::initialize().ok_or(LaunchError::Init("MPI was initialised already".into()))?;
    let world = universe.world();
    Ok(Box::new(MpiWorld { world, _universe: Arc::new(universe) }))
}

fn counts(op: &'static str, values: &[usize]) -> Result<Vec<Count>, CommError> {
    values.iter().map(|&c| Count::try_from(c).map_err(|_| CommError::Shape { op, reason: format!("{c} values exceed MPI's count range") })).collect()
}

fn displacements(counts: &[Count]) -> Vec<Count> {
    counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect()
}

impl MpiWorld {
    /// The element-wise sum over the ranks, added in rank order on every rank
    /// (`((r0 + r1) + r2) + …`), with a ring all-reduce's traffic: a reduce-scatter in
    /// rank order, then every rank gathers the sums. MPI's own all-reduce may pair ranks
    /// in another order, and then a job's sums differ in the last bits from one process
    /// accumulating the ranks' parts in order.
    fn sum_in_rank_order<T: Equivalence + Copy + Default + AddAssign>(&self, values: &mut [T]) {
        let size = self.size();
        if size == 1 || values.is_empty() {
            return;
        }
        let per = values.len().div_ceil(size);
        let mut blocks = values.to_vec();
        blocks.resize(per * size, T::default());
        let mine = self.reduce_scatter_in_rank_order(&blocks, per);
        self.world.all_gather_into(&mine[..], &mut blocks[..]);
        let n = values.len();
        values.copy_from_slice(&blocks[..n]);
    }

    /// Block `rank` (of `per` values) of the sum over the ranks of `blocks`: block `j`
    /// of every rank goes to rank `j` (all-to-all), which adds them in rank order.
    fn reduce_scatter_in_rank_order<T: Equivalence + Copy + Default + AddAssign>(&self, blocks: &[T], per: usize) -> Vec<T> {
        let mut from_ranks = vec![T::default(); blocks.len()];
        self.world.all_to_all_into(blocks, &mut from_ranks[..]);
        let mut mine = from_ranks[..per].to_vec();
        for block in from_ranks.chunks_exact(per).skip(1) {
            for (sum, &v) in mine.iter_mut().zip(block) {
                *sum += v;
            }
        }
        mine
    }
}

impl Communicator for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CommError> {
        self.sum_in_rank_order(values);
        Ok(())
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), CommError> {
        self.sum_in_rank_order(values);
        Ok(())
    }

    fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CommError> {
        let root = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        root.broadcast_into(&mut bytes[..]);
        Ok(())
    }

    fn all_gather(&self, mine: &[f32]) -> Result<Vec<f32>, CommError> {
        let mut all = vec![0f32; mine.len() * self.size()];
        self.world.all_gather_into(mine, &mut all[..]);
        Ok(all)
    }

    fn reduce_scatter_sum(&self, values: &[f32]) -> Result<Vec<f32>, CommError> {
        let size = self.size();
        if !values.len().is_multiple_of(size) {
            return Err(CommError::Shape { op: "reduce-scatter", reason: format!("{} values do not split into {size} equal blocks", values.len()) });
        }
        if values.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.reduce_scatter_in_rank_order(values, values.len() / size))
    }

    fn all_to_all(&self, send: &[f32], send_counts: &[usize]) -> Result<(Vec<f32>, Vec<usize>), CommError> {
        let size = self.size();
        if send_counts.len() != size || send_counts.iter().sum::<usize>() != send.len() {
            return Err(CommError::Shape { op: "all-to-all", reason: format!("counts {send_counts:?} must be one per rank ({size}) and add up to {}", send.len()) });
        }
        let send_counts = counts("all-to-all", send_counts)?;
        let mut recv_counts = vec![0 as Count; size];
        self.world.all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let total: usize = recv_counts.iter().map(|&c| c as usize).sum();
        let mut received = vec![0f32; total];
        {
            let send_displs = displacements(&send_counts);
            let recv_displs = displacements(&recv_counts);
            let outgoing = Partition::new(send, &send_counts[..], &send_displs[..]);
            let mut incoming = PartitionMut::new(&mut received[..], &recv_counts[..], &recv_displs[..]);
            self.world.all_to_all_varcount_into(&outgoing, &mut incoming);
        }
        Ok((received, recv_counts.iter().map(|&c| c as usize).collect()))
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.world.barrier();
        Ok(())
    }

    fn split(&self, color: usize, key: usize) -> Result<Arc<dyn Communicator>, CommError> {
        let engine = |reason: String| CommError::Engine { op: "split", rank: self.rank(), reason };
        let color = i32::try_from(color).map_err(|_| engine(format!("color {color} exceeds MPI's range")))?;
        let key = i32::try_from(key).map_err(|_| engine(format!("key {key} exceeds MPI's range")))?;
        let group = self.world.split_by_color_with_key(Color::with_value(color), key).ok_or_else(|| engine("MPI returned no communicator".into()))?;
        Ok(Arc::new(MpiWorld { world: group, _universe: self._universe.clone() }))
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
